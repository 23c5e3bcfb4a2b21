"""Entry points: ``parley-notify-worker`` and ``parley-notify-migrate``."""

from __future__ import annotations

import os
import tempfile


def worker() -> None:
    # Must be set before prometheus_client is imported, so prefork children's metrics are collected.
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="parley-notify-metrics-"))
    from parley_common.messaging.worker import run_worker

    from parley_notify.worker import app, settings

    run_worker(app, settings)


def migrate() -> None:
    from parley_common.db.migrations import upgrade

    from parley_notify.config import get_settings
    from parley_notify.models import SCHEMA

    upgrade("parley_notify", get_settings().database_url.get_secret_value(), SCHEMA)
