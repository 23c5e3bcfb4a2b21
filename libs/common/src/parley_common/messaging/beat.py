"""Celery beat, run the one way every Parley ``parley-<service>-beat`` process runs.

Beat must run as exactly one replica (the Helm charts pin it); two would send every periodic task
twice. Its schedule file lives under the temporary directory because pods run with a read-only root
filesystem (``/tmp`` is an ``emptyDir``); losing it on restart only means each periodic task runs at its
next due time, which is what Parley's idempotent periodic tasks expect.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from celery import Celery, signals

from parley_common.messaging.worker import WorkerSettings


def beat_schedule_path(service: str) -> str:
    """Where beat keeps its schedule: a writable path even on a read-only root filesystem."""
    return os.path.join(tempfile.gettempdir(), f"parley-{service}-celerybeat-schedule")


def run_beat(app: Celery, settings: WorkerSettings) -> None:
    """Start beat for ``app``: logging, tracing, health and metrics first, then the scheduler.

    With ``metrics_port`` set, ``/livez``, ``/readyz`` (ready once the scheduler started, while the
    database and Redis that ``settings`` configures answer) and ``/metrics`` are served on it.
    """
    from parley_common.health import serve_health, settings_checks
    from parley_common.process import init_process

    service: str = app.conf.parley_service
    init_process(service, "beat", settings)

    @signals.setup_logging.connect(weak=False)  # type: ignore[untyped-decorator]
    def _keep_our_logging(**_: Any) -> None:
        """Connected so Celery does not install its own handlers over ours."""

    if settings.metrics_port:
        health = serve_health(settings.metrics_port)
        for name, check in settings_checks(settings, name=f"{service}.beat").items():
            health.add_check(name, check)

        @signals.beat_init.connect(weak=False)  # type: ignore[untyped-decorator]
        def _started(**_: Any) -> None:
            health.set_started()

    # stdout carries our JSON log lines as they are: no redirect into a logger.
    app.Beat(
        loglevel=settings.log_level, schedule=beat_schedule_path(service), quiet=True, redirect_stdouts=False
    ).run()
