"""The outbox relay against real PostgreSQL and RabbitMQ, and the usage worker behind it.

Each test gets an outbox table of its own (same columns as every service's), so no other test's rows
can be relayed into its vhost.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from parley_common.db.engine import create_async_db_engine
from parley_common.events import TokensConsumedV1
from parley_common.messaging.relay import OutboxRelay
from parley_common.testing import rabbitmq
from parley_common.testing.net import free_port
from parley_common.testing.processes import ProcessManager, venv_command
from sqlalchemy import update

from tests.support.api import eventually
from tests.support.db import ledger_rows, query
from tests.support.outbox import Outbox


def usage_event(user_id: uuid.UUID, n: int) -> TokensConsumedV1:
    return TokensConsumedV1(
        source="test",
        user_id=user_id,
        request_id=f"req-{n}",
        model="m",
        provider="p",
        prompt_tokens=10 + n,
        completion_tokens=n,
    )


async def add(outbox: Outbox, events: list[TokensConsumedV1]) -> None:
    engine = create_async_db_engine(outbox.database_url, application_name="test.outbox", pool_size=1)
    try:
        async with engine.begin() as conn:
            rows = [
                {"event_id": e.id, "event_type": e.type, "payload": e.model_dump(mode="json")} for e in events
            ]
            await conn.execute(outbox.table.insert(), rows)
    finally:
        await engine.dispose()


async def relay_pass(outbox: Outbox, amqp_url: str, *, forget_publication_of: uuid.UUID | None = None) -> int:
    """One relay batch. ``forget_publication_of`` un-marks that row afterwards: the state a relay leaves
    when it dies after the broker's confirm and before its own commit."""
    engine = create_async_db_engine(outbox.database_url, application_name="test.relay", pool_size=1)
    relay = OutboxRelay(engine, outbox.table, amqp_url, service="test")
    try:
        await relay.connect()
        published = await relay.relay_once()
        if forget_publication_of is not None:
            async with engine.begin() as conn:
                await conn.execute(
                    update(outbox.table)
                    .where(outbox.table.c.event_id == forget_publication_of)
                    .values(published_at=None)
                )
        return published
    finally:
        await relay.close()
        await engine.dispose()


def pending(outbox: Outbox) -> list[dict[str, Any]]:
    return query(outbox.database_url, f"SELECT event_id FROM {outbox.name} WHERE published_at IS NULL")


class TestRelay:
    def test_rows_wait_while_the_broker_is_unreachable_then_go_out(
        self, outbox: Outbox, fresh_amqp_url: str
    ) -> None:
        asyncio.run(add(outbox, [usage_event(uuid.uuid4(), n) for n in range(3)]))
        unreachable = f"amqp://guest:guest@127.0.0.1:{free_port()}/"

        async def run_for(url: str, seconds: float) -> None:
            engine = create_async_db_engine(outbox.database_url, application_name="test.relay", pool_size=1)
            stop = asyncio.Event()
            task = asyncio.create_task(OutboxRelay(engine, outbox.table, url, service="test").run(stop))
            await asyncio.sleep(seconds)
            assert not task.done(), "the relay loop must survive an unreachable broker"
            stop.set()
            await asyncio.wait_for(task, 10)
            await engine.dispose()

        asyncio.run(run_for(unreachable, 1.5))
        assert len(pending(outbox)) == 3

        asyncio.run(run_for(fresh_amqp_url, 1.5))
        assert pending(outbox) == []
        assert asyncio.run(rabbitmq.queue_depth(fresh_amqp_url, "usage.events")) == 3

    def test_a_publication_repeated_after_a_crash_lands_once_in_the_ledger(
        self, outbox: Outbox, fresh_amqp_url: str, processes: ProcessManager
    ) -> None:
        user = uuid.uuid4()
        events = [usage_event(user, n) for n in range(5)]
        asyncio.run(add(outbox, events))
        assert asyncio.run(relay_pass(outbox, fresh_amqp_url, forget_publication_of=events[2].id)) == 5
        assert asyncio.run(relay_pass(outbox, fresh_amqp_url)) == 1  # event 2 goes out a second time
        assert pending(outbox) == []
        assert asyncio.run(rabbitmq.queue_depth(fresh_amqp_url, "usage.events")) == 6

        worker = processes.spawn(
            "usage-worker",
            [venv_command("parley-usage-worker")],
            {
                "PARLEY_DATABASE_URL": outbox.database_url,
                "PARLEY_RABBITMQ_URL": fresh_amqp_url,
                "PARLEY_ENV": "test",
            },
        )
        worker.wait_for_log("ledger.duplicate_ignored", timeout=30)
        rows = eventually(
            lambda: (r := ledger_rows(outbox.database_url, str(user))) and len(r) == 5 and r, what="5 rows"
        )
        assert sorted(r["request_id"] for r in rows) == [f"req-{n}" for n in range(5)]
        assert sum(r["prompt_tokens"] for r in rows) == sum(10 + n for n in range(5))
        eventually(
            lambda: asyncio.run(rabbitmq.queue_depth(fresh_amqp_url, "usage.events")) == 0,
            what="queue drained",
        )
        assert asyncio.run(rabbitmq.queue_depth(fresh_amqp_url, "usage.events.dlq")) == 0
