"""The ledger's one transaction per batch, against the real database: dedup, rollups, period totals,
threshold crossings, refused data."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime

import pytest
from parley_common.db.engine import create_async_db_engine
from parley_usage.ledger import record_batch
from parley_usage.thresholds import crossing_event_id
from sqlalchemy.exc import DataError
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.usage.support import rows, scalar, usage_event


@pytest.fixture
async def engine(ledger_partitions: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_db_engine(ledger_partitions, application_name="tests.ledger", pool_size=4)
    yield engine
    await engine.dispose()


def totals(database_url: str, user: uuid.UUID) -> dict[str, int]:
    return {
        "ledger_rows": scalar(database_url, "SELECT count(*) FROM usage.ledger WHERE user_id = :u", u=user),
        "ledger_tokens": scalar(
            database_url,
            "SELECT coalesce(sum(prompt_tokens + completion_tokens), 0) FROM usage.ledger WHERE user_id = :u",
            u=user,
        ),
        "rollup_requests": scalar(
            database_url,
            "SELECT coalesce(sum(requests), 0) FROM usage.daily_rollups WHERE user_id = :u",
            u=user,
        ),
        "rollup_tokens": scalar(
            database_url,
            "SELECT coalesce(sum(prompt_tokens + completion_tokens), 0) FROM usage.daily_rollups "
            "WHERE user_id = :u",
            u=user,
        ),
        "month_total": scalar(
            database_url,
            "SELECT coalesce(sum(tokens), 0) FROM usage.period_totals WHERE user_id = :u AND period = 'month'",
            u=user,
        ),
    }


def announced(database_url: str, user: uuid.UUID) -> list[tuple[str, int]]:
    return [
        (r.payload["period"], r.payload["threshold_percent"])
        for r in rows(
            database_url,
            "SELECT payload FROM usage.outbox WHERE payload->>'user_id' = :u ORDER BY id",
            u=str(user),
        )
    ]


class TestRecordBatch:
    async def test_redelivered_events_change_nothing(
        self, engine: AsyncEngine, ledger_partitions: str
    ) -> None:
        user = uuid.uuid4()
        events = [usage_event(user, n) for n in range(20)]
        first = await record_batch(engine, events)
        # The same events again, one of them twice in the same batch (a duplicate publish).
        again = await record_batch(engine, [*events[5:], events[7]])
        assert (first.inserted, first.duplicates) == (20, 0)
        assert (again.inserted, again.duplicates) == (0, 16)
        expected = sum(e.prompt_tokens + e.completion_tokens for e in events)
        assert totals(ledger_partitions, user) == {
            "ledger_rows": 20,
            "ledger_tokens": expected,
            "rollup_requests": 20,
            "rollup_tokens": expected,
            "month_total": expected,
        }

    async def test_rollups_per_day_and_model_with_cached_and_estimated_counts(
        self, engine: AsyncEngine, ledger_partitions: str
    ) -> None:
        user = uuid.uuid4()
        day = datetime(2026, 1, 12, 10, tzinfo=UTC)
        await record_batch(
            engine,
            [
                usage_event(user, 1, prompt=100, completion=50, at=day, model="a"),
                usage_event(
                    user, 2, prompt=10, completion=5, at=day, model="a", cached=True, provider="cache"
                ),
                usage_event(user, 3, prompt=7, completion=3, at=day, model="b", estimated=True),
            ],
        )
        got = rows(
            ledger_partitions,
            "SELECT model, provider, prompt_tokens, completion_tokens, requests, cached_requests, "
            "estimated_requests, cached_tokens, estimated_tokens FROM usage.daily_rollups "
            "WHERE user_id = :u AND day = :d ORDER BY model, provider",
            u=user,
            d=date(2026, 1, 12),
        )
        assert [tuple(r) for r in got] == [
            ("a", "cache", 10, 5, 1, 1, 0, 15, 0),
            ("a", "openai", 100, 50, 1, 0, 0, 0, 0),
            ("b", "openai", 7, 3, 1, 0, 1, 0, 10),
        ]

    async def test_data_the_database_refuses_rolls_the_whole_batch_back(
        self, engine: AsyncEngine, ledger_partitions: str
    ) -> None:
        user = uuid.uuid4()
        good = usage_event(user, 1)
        too_long = usage_event(user, 2, model="m" * 500)  # valid event, but the column holds 200
        with pytest.raises(DataError):
            await record_batch(engine, [good, too_long])
        assert totals(ledger_partitions, user)["ledger_rows"] == 0


class TestThresholds:
    async def test_each_threshold_is_announced_once_even_when_batches_are_replayed(
        self, engine: AsyncEngine, ledger_partitions: str
    ) -> None:
        user = uuid.uuid4()
        quota = {"daily_token_quota": 1000, "monthly_token_quota": 100_000, "plan": "free"}
        a = usage_event(user, 1, prompt=500, completion=0, **quota)
        b = usage_event(user, 2, prompt=300, completion=0, **quota)  # 800: 80 % of the day
        c = usage_event(user, 3, prompt=250, completion=0, **quota)  # 1,050: 100 %
        assert (await record_batch(engine, [a])).thresholds_announced == 0
        assert (await record_batch(engine, [b])).thresholds_announced == 1
        assert (await record_batch(engine, [a, b])).thresholds_announced == 0  # a redelivery
        assert (await record_batch(engine, [c, b])).thresholds_announced == 1
        assert (await record_batch(engine, [a, b, c])).thresholds_announced == 0
        more = usage_event(user, 4, prompt=10, completion=0, **quota)  # still over: nothing new
        assert (await record_batch(engine, [more])).thresholds_announced == 0

        assert announced(ledger_partitions, user) == [("day", 80), ("day", 100)]
        payloads = rows(
            ledger_partitions,
            "SELECT event_id, payload FROM usage.outbox WHERE payload->>'user_id' = :u ORDER BY id",
            u=str(user),
        )
        day = a.time.date()
        assert [p.event_id for p in payloads] == [
            crossing_event_id(user, "day", day, 80),
            crossing_event_id(user, "day", day, 100),
        ]
        assert payloads[0].payload["used_tokens"] == 800
        assert payloads[0].payload["quota_tokens"] == 1000
        assert payloads[0].payload["plan"] == "free"
        assert payloads[1].payload["used_tokens"] == 1050

    async def test_two_concurrent_batches_that_cross_together_announce_once(
        self, engine: AsyncEngine, ledger_partitions: str
    ) -> None:
        user = uuid.uuid4()
        quota = {"monthly_token_quota": 1000}
        # Neither batch reaches 80 % alone; together they pass 100 %. Different models, so their
        # rollup rows differ: only the period total serialises them.
        one = [usage_event(user, n, prompt=60, completion=0, model="a", **quota) for n in range(10)]
        two = [usage_event(user, 100 + n, prompt=60, completion=0, model="b", **quota) for n in range(10)]
        results = await asyncio.gather(record_batch(engine, one), record_batch(engine, two))
        assert sum(r.thresholds_announced for r in results) == 2
        assert sorted(announced(ledger_partitions, user)) == [("month", 80), ("month", 100)]

    async def test_unlimited_and_zero_quotas_announce_nothing(
        self, engine: AsyncEngine, ledger_partitions: str
    ) -> None:
        user = uuid.uuid4()
        await record_batch(
            engine,
            [
                usage_event(user, 1, prompt=10**6, completion=0),
                usage_event(user, 2, prompt=10, completion=0, daily_token_quota=0),
            ],
        )
        assert announced(ledger_partitions, user) == []
