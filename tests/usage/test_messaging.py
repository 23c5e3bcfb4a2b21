"""The shared messaging code usage relies on (and owns the performance of): the relay's batched publish
against a real broker (confirm, return, nack, large bodies) and its messages run by a real Celery worker."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any, Literal

import aio_pika
import pytest
from parley_common.db.engine import create_async_db_engine
from parley_common.events import Event, TokensConsumedV1
from parley_common.messaging import topology
from parley_common.messaging.relay import OutboxRelay
from parley_common.testing.processes import ProcessManager

from tests.support.outbox import Outbox
from tests.usage.celery_sink import SinkedV1
from tests.usage.support import drain_queue, rows, wait_until


class NobodyListensV1(Event):
    type: Literal["test.nobody_listens.v1"] = "test.nobody_listens.v1"


class OverflowedV1(Event):
    type: Literal["test.overflowed.v1"] = "test.overflowed.v1"


async def add(outbox: Outbox, events: list[Event]) -> None:
    engine = create_async_db_engine(outbox.database_url, application_name="tests.outbox", pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                outbox.table.insert(),
                [
                    {"event_id": e.id, "event_type": e.type, "payload": e.model_dump(mode="json")}
                    for e in events
                ],
            )
    finally:
        await engine.dispose()


async def relay_pass(outbox: Outbox, amqp_url: str) -> int:
    engine = create_async_db_engine(outbox.database_url, application_name="tests.relay", pool_size=1)
    relay = OutboxRelay(engine, outbox.table, amqp_url, service="test")
    try:
        await relay.connect()
        return await relay.relay_once()
    finally:
        await relay.close()
        await engine.dispose()


def state(outbox: Outbox) -> dict[str, tuple[Any, ...]]:
    return {
        r.event_type: (r.published, r.attempts, r.last_error)
        for r in rows(
            outbox.database_url,
            f"SELECT event_type, published_at IS NOT NULL AS published, attempts, last_error FROM {outbox.name}",
        )
    }


async def declare_tiny_queue(amqp_url: str) -> None:
    """A queue for test.overflowed.v1 that holds one message and refuses (nacks) the next ones."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        exchange = await topology.declare(channel)
        queue = await channel.declare_queue(
            "test.tiny", arguments={"x-max-length": 1, "x-overflow": "reject-publish"}, durable=True
        )
        await queue.bind(exchange, routing_key="test.overflowed.v1")
    finally:
        await connection.close()


class TestRelayOutcomes:
    def test_confirmed_unroutable_and_refused_rows_each_get_their_outcome(
        self, outbox: Outbox, fresh_amqp_url: str
    ) -> None:
        asyncio.run(declare_tiny_queue(fresh_amqp_url))
        usage = TokensConsumedV1(
            source="test",
            user_id=uuid.uuid4(),
            request_id="r",
            model="m",
            provider="p",
            prompt_tokens=1,
            completion_tokens=1,
        )
        first, second = OverflowedV1(source="test"), OverflowedV1(source="test")
        asyncio.run(add(outbox, [usage, NobodyListensV1(source="test")]))
        asyncio.run(add(outbox, [first]))
        asyncio.run(add(outbox, [second]))

        assert asyncio.run(relay_pass(outbox, fresh_amqp_url)) == 2  # the usage event and one overflow
        outcomes = state(outbox)
        assert outcomes["usage.tokens_consumed.v1"] == (True, 0, None)
        assert outcomes["test.nobody_listens.v1"][:2] == (False, 1)
        assert outcomes["test.nobody_listens.v1"][2].startswith("unroutable")
        published = rows(
            outbox.database_url,
            f"SELECT published_at IS NOT NULL AS p, attempts, last_error FROM {outbox.name} WHERE event_type = 'test.overflowed.v1' ORDER BY id",
        )
        assert sorted((r.p, r.attempts) for r in published) == [(False, 1), (True, 0)]
        assert next(r.last_error for r in published if not r.p).startswith("refused")
        # Only the confirmed usage event reached its queue, intact and as Celery expects it.
        [message] = drain_queue(fresh_amqp_url, topology.USAGE.name)
        assert message.headers["task"] == "usage.tokens_consumed.v1"
        assert message.headers["id"] == str(usage.id)
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        args, kwargs, embed = json.loads(message.body)
        assert (args, embed["chain"]) == ([], None)
        assert TokensConsumedV1.model_validate(kwargs["event"]) == usage

    def test_a_body_larger_than_one_frame_arrives_whole(self, outbox: Outbox, fresh_amqp_url: str) -> None:
        big = TokensConsumedV1(
            source="test",
            user_id=uuid.uuid4(),
            request_id="x" * 400_000,
            model="m",
            provider="p",
            prompt_tokens=1,
            completion_tokens=1,
        )
        asyncio.run(add(outbox, [big]))
        assert asyncio.run(relay_pass(outbox, fresh_amqp_url)) == 1
        [message] = drain_queue(fresh_amqp_url, topology.USAGE.name)
        assert len(message.body) > 400_000
        assert TokensConsumedV1.model_validate(json.loads(message.body)[1]["event"]) == big


class TestRelayToCelery:
    def test_a_relayed_event_runs_in_a_parley_celery_worker_with_its_trace(
        self, outbox: Outbox, fresh_amqp_url: str, processes: ProcessManager, tmp_path: Path
    ) -> None:
        output = tmp_path / "sink.jsonl"
        worker = processes.spawn(
            "celery-sink", [sys.executable, "-m", "tests.usage.celery_sink", fresh_amqp_url, str(output)]
        )
        worker.wait_for_log(r"ready\.$", timeout=120)
        traceparent = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
        events = [SinkedV1(source="test", n=n, traceparent=traceparent) for n in range(3)]
        asyncio.run(add(outbox, list(events)))
        assert asyncio.run(relay_pass(outbox, fresh_amqp_url)) == 3
        lines = wait_until(
            lambda: (
                output.exists()
                and len(output.read_text().splitlines()) == 3
                and output.read_text().splitlines()
            ),
            timeout=60,
            what="three tasks run",
        )
        assert sorted(json.loads(line)["n"] for line in lines) == [0, 1, 2]
        assert {json.loads(line)["traceparent"] for line in lines} == {traceparent}
        assert sorted(json.loads(line)["id"] for line in lines) == sorted(str(e.id) for e in events)


class TestBatchedPublishCancelled:
    def test_a_batch_cancelled_before_it_was_written_gives_its_delivery_tags_back(
        self, fresh_amqp_url: str
    ) -> None:
        from aiormq.abc import ChannelFrame
        from pamqp.heartbeat import Heartbeat
        from parley_common.messaging.celery_protocol import event_message
        from parley_common.messaging.relay import _enqueue_publishes

        def usage() -> TokensConsumedV1:
            return TokensConsumedV1(
                source="t",
                user_id=uuid.uuid4(),
                request_id="r",
                model="m",
                provider="p",
                prompt_tokens=1,
                completion_tokens=1,
            )

        async def scenario() -> tuple[int, int, int]:
            connection = await aio_pika.connect(fresh_amqp_url)
            try:
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                await topology.declare(channel)
                raw = await channel.get_underlay_channel()
                before = raw.delivery_tag

                def fill() -> None:
                    while not raw.write_queue.full():
                        raw.write_queue.put_nowait(
                            ChannelFrame.marshall(channel_number=0, frames=[Heartbeat()])
                        )

                # In this order, in one turn of the loop: the writer's queue fills up, the batch finds no
                # room and waits, and is cancelled while it waits (before the writer frees a slot).
                loop = asyncio.get_running_loop()
                loop.call_soon(fill)
                task = asyncio.ensure_future(
                    _enqueue_publishes(raw, [event_message(usage()) for _ in range(3)])
                )
                loop.call_soon(task.cancel)
                with pytest.raises(asyncio.CancelledError):
                    await task
                after_cancel = raw.delivery_tag
                # The next batch's confirms must still settle the right futures.
                confirms = await _enqueue_publishes(raw, [event_message(usage()) for _ in range(2)])
                done, _ = await asyncio.wait(confirms, timeout=10)
                return before, after_cancel, sum(1 for f in done if f.exception() is None)
            finally:
                await connection.close()

        before, after_cancel, confirmed = asyncio.run(scenario())
        assert after_cancel == before
        assert confirmed == 2
        assert len(drain_queue(fresh_amqp_url, topology.USAGE.name)) == 2
