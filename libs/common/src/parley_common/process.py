"""Start-up of any Parley process: logging and tracing from its settings."""

from __future__ import annotations

from parley_common.logs import configure_logging
from parley_common.settings import ParleySettings
from parley_common.telemetry import configure_tracing


def init_process(service: str, process: str, settings: ParleySettings) -> None:
    """Configure logging and tracing for one process (safe to call again in a forked or spawned child)."""
    configure_logging(
        service, process, level=settings.log_level, fmt=settings.log_format, region=settings.region
    )
    configure_tracing(
        service,
        exporter=settings.otel_exporter,
        endpoint=settings.otel_endpoint,
        region=settings.region,
        env=settings.env,
    )
