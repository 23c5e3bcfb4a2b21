"""Messages built by our protocol-2 builder and published with aio-pika run in a real Celery worker."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path

import aio_pika
from parley_common.messaging import topology
from parley_common.messaging.celery_protocol import build_task_message
from parley_common.testing.processes import ProcessManager

from tests.support.api import eventually
from tests.support.echo_worker import ECHO_QUEUE


async def publish(url: str, task_id: str, kwargs: dict[str, object], traceparent: str) -> None:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await topology.declare(channel, queues=(ECHO_QUEUE,))
        msg = build_task_message("test.echo.v1", task_id, kwargs, traceparent=traceparent, origin="test")
        await exchange.publish(
            aio_pika.Message(
                msg.body,
                headers=msg.headers,
                content_type=msg.content_type,
                content_encoding=msg.content_encoding,
                message_id=msg.message_id,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=msg.routing_key,
            mandatory=True,
        )
    finally:
        await connection.close()


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
    asyncio.run(publish(fresh_amqp_url, task_id, {"event": {"n": 1, "text": "héllo"}}, traceparent))

    lines = eventually(lambda: output.exists() and output.read_text().splitlines(), what="the task to run")
    record = json.loads(lines[0])
    assert record == {
        "task_id": task_id,
        "task": "test.echo.v1",
        "kwargs": {"event": {"n": 1, "text": "héllo"}},
        "traceparent": traceparent,
    }
