"""What every worker reads (Celery workers and batch consumers alike), apart from Celery itself, so a
service whose only worker is a batch consumer does not need Celery installed."""

from __future__ import annotations

from pydantic import Field

from parley_common.settings import ParleySettings, RabbitSettings


class WorkerSettings(ParleySettings, RabbitSettings):
    """What every Celery worker reads."""

    worker_concurrency: int = Field(2, ge=1, description="Celery prefork child processes")
    task_time_limit: int = Field(
        300, ge=1, description="Seconds a task may run before it is killed (Helm's grace period exceeds it)"
    )
    transient_retries: int = Field(
        5,
        ge=0,
        description="In-place retries of a transient failure before the message goes back to the queue",
    )
    metrics_port: int | None = Field(
        None,
        description="Port serving /metrics, /livez and /readyz from a worker, beat or relay (unset: none)",
    )
