"""``parley-usage-beat``: usage's scheduled jobs, one process, one replica.

Celery beat publishes the jobs to the ``usage.maintenance`` queue and the worker embedded in the same
process (solo pool) runs them; every job also runs once at start-up, so a fresh deployment has its
partitions and seeded counters at once rather than an interval later.

- ``usage.maintain_partitions`` (hourly): ledger partitions ahead, rows out of the default partition,
  old partitions detached; the partition gauges.
- ``usage.check_quota_seed`` (every few seconds): re-seed Redis quota counters if Redis lost its data.
- ``usage.reconcile_quotas`` (every few minutes): raise Redis quota counters to the ledger's totals.
- ``usage.measure_drift`` (every 15 minutes): provider-reported usage against the ledger.

A job that fails is logged, counted (``parley_usage_maintenance_failures_total``) and acknowledged: the
next tick runs it again, so a failure never piles messages up in the queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import cache
from typing import Any

from celery import Celery, signals
from parley_common.db.engine import create_sync_db_engine
from parley_common.logs import get_logger
from parley_common.messaging import topology
from parley_common.messaging.worker import create_celery_app, run_worker
from sqlalchemy import Engine

from parley_usage import drift, partitions, quotas
from parley_usage.config import Settings, get_settings
from parley_usage.metrics import MAINTENANCE_FAILURES, MAINTENANCE_LAST_SUCCESS

log = get_logger(__name__)

JOBS = topology.USAGE_MAINTENANCE.event_types


def policy(settings: Settings) -> partitions.PartitionPolicy:
    return partitions.PartitionPolicy(
        interval=settings.usage_partition_interval,
        ahead=settings.usage_partitions_ahead,
        retention_days=settings.usage_retention_days,
        lock_timeout_ms=settings.usage_ddl_lock_timeout_ms,
        retries=settings.usage_ddl_retries,
    )


def create_app(settings: Settings) -> Celery:
    app = create_celery_app("usage", topology.USAGE_MAINTENANCE, settings)
    intervals = {
        "usage.maintain_partitions": settings.usage_maintenance_interval,
        "usage.check_quota_seed": settings.usage_seed_check_interval,
        "usage.reconcile_quotas": settings.usage_reconcile_interval,
        "usage.measure_drift": settings.usage_drift_interval,
    }
    app.conf.beat_schedule = {
        name: {"task": name, "schedule": seconds, "options": _route(name, seconds)}
        for name, seconds in intervals.items()
    }

    @cache
    def engine() -> Engine:
        return create_sync_db_engine(
            settings.database_url, application_name="usage.beat", pool_size=1, max_overflow=1
        )

    @cache
    def redis() -> Any:
        return quotas.redis_client(settings)

    def job(name: str, body: Callable[[], object]) -> None:
        @app.task(name=name, ignore_result=True)  # type: ignore[untyped-decorator]
        def run() -> None:
            started = time.perf_counter()
            try:
                result = body()
            except Exception as exc:
                MAINTENANCE_FAILURES.labels(name).inc()
                log.exception("job.failed", job=name, error=type(exc).__name__)
                return
            MAINTENANCE_LAST_SUCCESS.labels(name).set_to_current_time()
            log.info(
                "job.done", job=name, seconds=round(time.perf_counter() - started, 3), result=repr(result)
            )

    job("usage.maintain_partitions", lambda: partitions.maintain(engine(), policy(settings)))
    job("usage.check_quota_seed", lambda: quotas.ensure_seeded(engine(), redis(), settings.redis_key_prefix))
    job(
        "usage.reconcile_quotas",
        lambda: quotas.reconcile_and_mark(engine(), redis(), settings.redis_key_prefix),
    )
    job("usage.measure_drift", lambda: drift.measure_drift(engine(), settings.usage_drift_lookback_days))

    @signals.worker_ready.connect(weak=False)  # type: ignore[untyped-decorator]
    def _run_everything_once(**_: Any) -> None:
        for name in JOBS:
            app.send_task(name, **_route(name, 60.0))

    return app


def _route(name: str, interval: float) -> dict[str, Any]:
    # To the topic exchange under the job's name, where only usage.maintenance is bound to it; a tick
    # that waited longer than its interval is dropped (the next one does the same work).
    return {"exchange": topology.EXCHANGE, "routing_key": name, "expires": max(interval, 5.0)}


def run() -> None:
    settings = get_settings()
    app = create_app(settings)
    run_worker(
        app,
        settings,
        extra_args=["--beat", "--pool", "solo", "--scheduler", "celery.beat:Scheduler"],
    )
