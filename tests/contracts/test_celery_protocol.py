"""Messages built by our protocol-2 builder and published with aio-pika run in a real Celery worker."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

from parley_common.messaging.celery_protocol import build_task_message
from parley_common.testing import rabbitmq
from parley_common.testing.processes import ProcessManager

from tests.support.api import eventually
from tests.support.echo_worker import ECHO_QUEUE


def test_protocol2_message_runs_the_named_task_with_id_kwargs_and_trace(
    processes: ProcessManager, fresh_amqp_url: str, tmp_path: Path
) -> None:
    output = tmp_path / "echo.jsonl"
    worker = processes.spawn(
        "echo-worker", [sys.executable, "-m", "tests.support.echo_worker", fresh_amqp_url, str(output)]
    )
    worker.wait_for_log(r"ready\.$")
    task_id = str(uuid.uuid4())
    traceparent = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
    message = build_task_message(
        "test.echo.v1", task_id, {"event": {"n": 1, "text": "héllo"}}, traceparent=traceparent, origin="test"
    )
    rabbitmq.publish(fresh_amqp_url, [message], queues=[ECHO_QUEUE])

    lines = eventually(lambda: output.exists() and output.read_text().splitlines(), what="the task to run")
    record = json.loads(lines[0])
    assert record == {
        "task_id": task_id,
        "task": "test.echo.v1",
        "kwargs": {"event": {"n": 1, "text": "héllo"}},
        "traceparent": traceparent,
    }
