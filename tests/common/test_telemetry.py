"""Tracing: the exporter is a setting, and trace context survives HTTP-style and AMQP-style carriers."""

from __future__ import annotations

import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from parley_common.telemetry import (
    configure_tracing,
    current_traceparent,
    inject_context,
    span_from_carrier,
    tracer,
)

EXPORT_SCRIPT = r"""
import sys
from opentelemetry import trace
from parley_common.telemetry import configure_tracing, tracer
configure_tracing("probe", exporter=sys.argv[1], endpoint=sys.argv[2] if len(sys.argv) > 2 else None)
with tracer().start_as_current_span("probe-span"):
    pass
trace.get_tracer_provider().force_flush()
"""


def test_context_crosses_a_carrier_and_continues_the_trace() -> None:
    configure_tracing("test")  # no exporter: spans are not recorded, their ids still travel
    with tracer().start_as_current_span("producer") as producer:
        headers = inject_context({})
        assert headers["traceparent"] == current_traceparent()
        assert not producer.is_recording()
    assert producer.get_span_context().is_valid
    flags = int(headers["traceparent"].rsplit("-", 1)[1], 16)
    assert flags & 0x01 == 0  # not "sampled": downstream knows nothing was recorded here
    with span_from_carrier("consumer", headers) as consumer:
        assert consumer.get_span_context().trace_id == producer.get_span_context().trace_id
        assert consumer.get_span_context().span_id != producer.get_span_context().span_id


def test_console_exporter_writes_spans_to_stderr_not_stdout() -> None:
    result = subprocess.run(
        [sys.executable, "-c", EXPORT_SCRIPT, "console"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert '"name": "probe-span"' in result.stderr
    assert "probe-span" not in result.stdout


def test_otlp_exporter_posts_spans_to_the_collector() -> None:
    received: list[tuple[str, str, int]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            received.append((self.path, self.headers["content-type"], len(body)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_port}/v1/traces"
        subprocess.run([sys.executable, "-c", EXPORT_SCRIPT, "otlp", endpoint], timeout=60, check=True)
    finally:
        server.shutdown()
    assert len(received) == 1
    path, content_type, size = received[0]
    assert (path, content_type) == ("/v1/traces", "application/x-protobuf")
    assert size > 0
