"""JSON logs carry the request id and the trace id on every line, and never a credential.

The logging set-up is process-wide, so it is exercised in a child process, as a service would run it.
"""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = r"""
import logging
from parley_common.logs import bind_context, configure_logging, get_logger
from parley_common.telemetry import configure_tracing, tracer

configure_tracing("test")
configure_logging("test", "unit", level="INFO", fmt="json", region="eu-1")
bind_context(request_id="req-1")
with tracer().start_as_current_span("work") as span:
    get_logger("t").info("thing.done", count=3)
    logging.getLogger("stdlib").warning("from the standard library")
    get_logger("t").info("login", password="hunter2", authorization="Bearer abc", prompt_tokens=12, api_key="sk-1")
    print("TRACE", format(span.get_span_context().trace_id, "032x"))
"""


def run() -> tuple[list[dict[str, object]], str]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    trace = next(line.split()[1] for line in out.splitlines() if line.startswith("TRACE"))
    return lines, trace


def test_every_line_carries_request_and_trace_ids_and_redacts_credentials() -> None:
    lines, trace_id = run()
    assert [line["event"] for line in lines] == ["thing.done", "from the standard library", "login"]
    for line in lines:
        assert line["request_id"] == "req-1"
        assert line["trace_id"] == trace_id
        assert (line["service"], line["process"], line["region"]) == ("test", "unit", "eu-1")
        assert "timestamp" in line
    login = lines[2]
    assert login["password"] == login["authorization"] == login["api_key"] == "[redacted]"
    assert login["prompt_tokens"] == 12
    assert "hunter2" not in json.dumps(lines)
