"""Outbox relay throughput: rows committed to the outbox → confirmed by RabbitMQ → marked published.

Two figures from one run on the same data: the relay as built (a batch of confirms in flight at once)
and the same relay publishing one message at a time (batch of 1), the pattern that caps near 1,000/s.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from parley_chat.models import OutboxMessage
from parley_common.db.engine import create_async_db_engine
from parley_common.events import TokensConsumedV1
from parley_common.messaging.relay import OutboxRelay, RelayConfig
from sqlalchemy import func, insert, select

from bench.context import BenchContext

N = 20_000
N_SERIAL = 3_000


async def _fill(engine: Any, count: int) -> None:
    table = OutboxMessage.outbox_table()
    user = uuid.uuid4()
    rows = []
    for i in range(count):
        event = TokensConsumedV1(
            source="bench",
            user_id=user,
            request_id=f"r{i}",
            model="m",
            provider="p",
            prompt_tokens=10,
            completion_tokens=5,
        )
        rows.append(
            {"event_id": event.id, "event_type": event.type, "payload": event.model_dump(mode="json")}
        )
    async with engine.begin() as conn:
        for start in range(0, count, 2000):
            await conn.execute(insert(table), rows[start : start + 2000])


async def _drain(relay: OutboxRelay, engine: Any) -> float:
    table = OutboxMessage.outbox_table()
    started = time.perf_counter()
    await relay.connect()
    while True:
        if await relay.relay_once() == 0:
            async with engine.connect() as conn:
                pending = (
                    await conn.execute(select(func.count()).where(table.c.published_at.is_(None)))
                ).scalar_one()
            if pending == 0:
                break
    elapsed = time.perf_counter() - started
    await relay.close()
    return elapsed


async def _bench(ctx: BenchContext) -> dict[str, Any]:
    engine = create_async_db_engine(ctx.database_url, application_name="bench.relay", pool_size=2)
    table = OutboxMessage.outbox_table()
    try:
        await _fill(engine, N)
        pipelined = await _drain(OutboxRelay(engine, table, ctx.amqp_url, service="bench"), engine)
        await _fill(engine, N_SERIAL)
        serial = await _drain(
            OutboxRelay(engine, table, ctx.amqp_url, service="bench", config=RelayConfig(batch_size=1)),
            engine,
        )
    finally:
        await engine.dispose()
    pipelined_rate, serial_rate = N / pipelined, N_SERIAL / serial
    return {
        "summary": {
            "pipelined_msgs_per_s": round(pipelined_rate),
            "one_at_a_time_msgs_per_s": round(serial_rate),
            "speedup": round(pipelined_rate / serial_rate, 1),
        },
        "pipelined": {"events": N, "seconds": round(pipelined, 2), "batch_size": RelayConfig().batch_size},
        "one_at_a_time": {"events": N_SERIAL, "seconds": round(serial, 2)},
        "consumers": "none (messages stay queued in usage.events; the figure is the publish side alone)",
    }


def run(ctx: BenchContext) -> dict[str, Any]:
    return asyncio.run(_bench(ctx))
