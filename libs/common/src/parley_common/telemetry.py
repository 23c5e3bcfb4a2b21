"""OpenTelemetry tracing and W3C trace-context propagation.

Every process installs an SDK tracer provider, even with no exporter, so trace and span ids exist and
propagate: a trace started at the gateway continues in chat (HTTP headers), through the outbox (the
event envelope's ``traceparent``) and RabbitMQ (AMQP headers), into the worker that handles the event.
With no exporter nothing would ever read a span, so none is recorded: spans are non-recording (ids made
and propagated, nothing kept), which measured as a tenth of the gateway's CPU per streamed request. With
an exporter, the sampler is OpenTelemetry's default or ``OTEL_TRACES_SAMPLER``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Literal

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import Span, SpanKind

Exporter = Literal["none", "console", "otlp"]

_configured = False


def configure_tracing(
    service: str,
    *,
    exporter: Exporter = "none",
    endpoint: str | None = None,
    region: str = "local",
    env: str = "dev",
) -> None:
    """Install the tracer provider for this process (idempotent: the first call wins)."""
    global _configured
    if _configured:
        return
    resource = Resource.create(
        {
            "service.name": f"parley-{service}",
            "service.namespace": "parley",
            "deployment.environment": env,
            "cloud.region": region,
        }
    )
    provider = TracerProvider(resource=resource, sampler=ALWAYS_OFF if exporter == "none" else None)
    if exporter == "console":
        # stderr, so span dumps never interleave with the JSON log lines on stdout.
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    _configured = True


def tracer(name: str = "parley") -> trace.Tracer:
    """The tracer for Parley's own spans."""
    return trace.get_tracer(name)


def inject_context(carrier: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Write the current trace context (``traceparent``, ``tracestate``) into ``carrier``."""
    propagate.inject(carrier)
    return carrier


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, or None outside any trace."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def current_trace_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) in hex of the current span, or None when there is no valid span."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


@contextmanager
def span_from_carrier(
    name: str,
    carrier: Mapping[str, str],
    *,
    kind: SpanKind = SpanKind.CONSUMER,
    attributes: dict[str, str] | None = None,
) -> Iterator[Span]:
    """Run a block in a span whose parent is the trace context found in ``carrier``.

    Used where a trace arrives from outside: HTTP headers, AMQP headers, an event envelope.
    """
    parent = propagate.extract(carrier)
    token = otel_context.attach(parent)
    try:
        with tracer().start_as_current_span(name, kind=kind, attributes=attributes) as span:
            yield span
    finally:
        otel_context.detach(token)
