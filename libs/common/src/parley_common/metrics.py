"""Prometheus metrics: shared instruments and the ``/metrics`` exposition.

Every metric is named ``parley_*``. HTTP processes serve ``/metrics`` on their own port; Celery workers
serve it from the main process with the multiprocess collector, so prefork children are counted too.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client import multiprocess as prom_multiprocess

HTTP_REQUESTS = Counter(
    "parley_http_requests_total", "HTTP requests served", ["service", "method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "parley_http_request_duration_seconds",
    "Time from request start to the end of the response body",
    ["service", "method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
EVENTS_HANDLED = Counter(
    "parley_events_handled_total", "Events handled by a worker", ["service", "type", "outcome"]
)
OUTBOX_PUBLISHED = Counter(
    "parley_outbox_published_total", "Outbox rows confirmed by the broker", ["service"]
)
OUTBOX_FAILED = Counter(
    "parley_outbox_publish_failures_total", "Outbox publishes refused or not confirmed", ["service", "reason"]
)


def render_latest() -> tuple[bytes, str]:
    """The exposition body and its content type, multiprocess-aware."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


def serve_metrics(port: int, addr: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` from a background thread (worker processes, which have no HTTP server)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        start_http_server(port, addr=addr, registry=registry)
    else:
        start_http_server(port, addr=addr)
