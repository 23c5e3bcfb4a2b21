"""Ledger partitions: boundaries, the default partition, retention, DDL under lock contention."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from parley_common.db.admin import drop_database
from parley_common.db.engine import connect_args, create_async_db_engine
from parley_common.db.migrations import registered
from parley_common.testing import resources, services
from parley_usage.ledger import record_batch
from parley_usage.partitions import PartitionPolicy, list_partitions, maintain
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from tests.usage.support import rows, scalar, usage_event


@pytest.fixture
def sync_engine(ledger_partitions: str) -> Iterator[Engine]:
    engine = create_engine(ledger_partitions, connect_args=connect_args("tests.partitions"))
    yield engine
    engine.dispose()


def write(database_url: str, events: list) -> None:  # type: ignore[type-arg]
    async def go() -> None:
        engine = create_async_db_engine(database_url, application_name="tests.partitions", pool_size=1)
        try:
            await record_batch(engine, events)
        finally:
            await engine.dispose()

    asyncio.run(go())


def placement(database_url: str, event_id: uuid.UUID) -> list[str]:
    """Which partition(s) hold the event's row."""
    return [
        r.part
        for r in rows(
            database_url,
            "SELECT tableoid::regclass::text AS part FROM usage.ledger WHERE event_id = :e",
            e=event_id,
        )
    ]


class TestMonthBoundary:
    def test_last_and_first_millisecond_land_in_their_own_months_and_days(
        self, sync_engine: Engine, ledger_partitions: str
    ) -> None:
        maintain(sync_engine, PartitionPolicy(retention_days=100_000), now=datetime(2026, 1, 15, tzinfo=UTC))
        user = uuid.uuid4()
        late = usage_event(user, 1, at=datetime(2026, 1, 31, 23, 59, 59, 999000, tzinfo=UTC))
        early = usage_event(user, 2, at=datetime(2026, 2, 1, 0, 0, 0, 0, tzinfo=UTC))
        write(ledger_partitions, [late, early])
        # A redelivery of both, in another batch, changes nothing.
        write(ledger_partitions, [early, late])

        assert placement(ledger_partitions, late.id) == ["usage.ledger_20260101"]
        assert placement(ledger_partitions, early.id) == ["usage.ledger_20260201"]
        days = rows(
            ledger_partitions,
            "SELECT day, requests FROM usage.daily_rollups WHERE user_id = :u ORDER BY day",
            u=user,
        )
        assert [(str(r.day), r.requests) for r in days] == [("2026-01-31", 1), ("2026-02-01", 1)]
        months = rows(
            ledger_partitions,
            "SELECT period_start, tokens FROM usage.period_totals WHERE user_id = :u AND period = 'month' "
            "ORDER BY period_start",
            u=user,
        )
        assert [str(r.period_start) for r in months] == ["2026-01-01", "2026-02-01"]


class TestDefaultPartition:
    def test_an_event_for_a_period_without_partition_is_kept_then_moved_and_still_deduplicated(
        self, sync_engine: Engine, ledger_partitions: str
    ) -> None:
        user = uuid.uuid4()
        future = usage_event(user, 1, at=datetime(2031, 5, 17, 12, tzinfo=UTC))
        write(ledger_partitions, [future])
        write(ledger_partitions, [future])  # redelivered while it sits in the default partition
        assert placement(ledger_partitions, future.id) == ["usage.ledger_default"]

        report = maintain(sync_engine, PartitionPolicy())
        assert "ledger_20310501" in report.created
        assert placement(ledger_partitions, future.id) == ["usage.ledger_20310501"]
        write(ledger_partitions, [future])  # redelivered after the move
        assert placement(ledger_partitions, future.id) == ["usage.ledger_20310501"]
        assert (
            scalar(ledger_partitions, "SELECT requests FROM usage.daily_rollups WHERE user_id = :u", u=user)
            == 1
        )

    def test_future_partitions_are_kept_ahead_and_reported(self, sync_engine: Engine) -> None:
        report = maintain(sync_engine, PartitionPolicy(ahead=3))
        assert report.future >= 3
        now = datetime.now(UTC)
        with sync_engine.begin() as conn:
            starts = [p.start for p in list_partitions(conn)]
        current = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        assert current in starts


class TestRetention:
    def test_a_detached_partition_whose_period_is_wanted_again_is_attached_again(
        self, sync_engine: Engine, ledger_partitions: str
    ) -> None:
        far = PartitionPolicy(ahead=0, retention_days=100_000)
        maintain(sync_engine, far, now=datetime(2019, 6, 5, tzinfo=UTC))
        user = uuid.uuid4()
        kept = usage_event(user, 1, at=datetime(2019, 6, 7, tzinfo=UTC))
        write(ledger_partitions, [kept])
        assert "ledger_20190601" in maintain(sync_engine, PartitionPolicy(retention_days=400)).detached
        late = usage_event(user, 2, at=datetime(2019, 6, 8, tzinfo=UTC))
        write(ledger_partitions, [late])  # no partition for June 2019 any more: the default one keeps it
        assert placement(ledger_partitions, late.id) == ["usage.ledger_default"]

        report = maintain(sync_engine, far, now=datetime(2019, 6, 20, tzinfo=UTC))
        assert "ledger_20190601" in report.created
        assert placement(ledger_partitions, kept.id) == ["usage.ledger_20190601"]
        assert placement(ledger_partitions, late.id) == ["usage.ledger_20190601"]

    def test_partitions_past_retention_are_detached_but_kept_as_tables(
        self, sync_engine: Engine, ledger_partitions: str
    ) -> None:
        maintain(
            sync_engine,
            PartitionPolicy(ahead=0, retention_days=100_000),
            now=datetime(2020, 3, 5, tzinfo=UTC),
        )
        user = uuid.uuid4()
        old = usage_event(user, 1, at=datetime(2020, 3, 9, tzinfo=UTC))
        write(ledger_partitions, [old])
        assert placement(ledger_partitions, old.id) == ["usage.ledger_20200301"]

        report = maintain(sync_engine, PartitionPolicy(retention_days=400))
        assert "ledger_20200301" in report.detached
        assert placement(ledger_partitions, old.id) == []  # no longer part of the ledger
        kept = scalar(
            ledger_partitions, "SELECT count(*) FROM usage.ledger_20200301 WHERE event_id = :e", e=old.id
        )
        assert kept == 1


class TestLockTimeouts:
    def test_ddl_waits_at_most_lock_timeout_then_retries_until_it_gets_through(
        self, sync_engine: Engine, ledger_partitions: str
    ) -> None:
        holding = threading.Event()
        release = threading.Event()

        def hold_default_partition() -> None:
            # A long transaction writing to the default partition: attaching a partition must wait for it.
            with sync_engine.begin() as conn:
                conn.execute(text("LOCK TABLE usage.ledger_default IN ROW EXCLUSIVE MODE"))
                holding.set()
                release.wait(10)

        holder = threading.Thread(target=hold_default_partition)
        holder.start()
        holding.wait(10)
        timer = threading.Timer(1.5, release.set)
        timer.start()
        try:
            report = maintain(
                sync_engine,
                # A far-away "now" with a retention that detaches nothing of the shared test ledger.
                PartitionPolicy(ahead=0, lock_timeout_ms=200, retries=20, retention_days=100_000),
                now=datetime(2041, 7, 3, tzinfo=UTC),
            )
        finally:
            release.set()
            holder.join()
        assert report.created == ["ledger_20410701"]
        assert report.lock_timeouts >= 1

    def test_without_retries_a_lock_timeout_fails_cleanly(
        self, sync_engine: Engine, ledger_partitions: str
    ) -> None:
        release = threading.Event()
        holding = threading.Event()

        def hold() -> None:
            with sync_engine.begin() as conn:
                conn.execute(text("LOCK TABLE usage.ledger_default IN ROW EXCLUSIVE MODE"))
                holding.set()
                release.wait(10)

        holder = threading.Thread(target=hold)
        holder.start()
        holding.wait(10)
        try:
            with pytest.raises(OperationalError):
                maintain(
                    sync_engine,
                    PartitionPolicy(ahead=0, lock_timeout_ms=100, retries=0, retention_days=100_000),
                    now=datetime(2043, 2, 3, tzinfo=UTC),
                )
        finally:
            release.set()
            holder.join()
        # The failed attempt rolled back whole: no half-made table.
        assert scalar(ledger_partitions, "SELECT to_regclass('usage.ledger_20430201')") is None


@pytest.fixture
def day_partitioned_database(parley_services: services.TestServices) -> Iterator[str]:
    url = resources.create_database(parley_services.database_url, resources.new_tag(), registered())
    yield url
    drop_database(url)


class TestDayPartitions:
    def test_daily_partitions_split_the_last_and_first_millisecond_of_a_day(
        self, day_partitioned_database: str
    ) -> None:
        engine = create_engine(day_partitioned_database, connect_args=connect_args("tests.partitions"))
        try:
            report = maintain(
                engine, PartitionPolicy(interval="day", ahead=2), now=datetime(2026, 3, 9, 8, tzinfo=UTC)
            )
        finally:
            engine.dispose()
        assert report.created == ["ledger_20260309", "ledger_20260310", "ledger_20260311"]
        assert report.future == 2
        user = uuid.uuid4()
        late = usage_event(user, 1, at=datetime(2026, 3, 9, 23, 59, 59, 999000, tzinfo=UTC))
        early = usage_event(user, 2, at=datetime(2026, 3, 10, 0, 0, 0, tzinfo=UTC))
        write(day_partitioned_database, [early, late])
        write(day_partitioned_database, [late])
        assert placement(day_partitioned_database, late.id) == ["usage.ledger_20260309"]
        assert placement(day_partitioned_database, early.id) == ["usage.ledger_20260310"]


class TestShortfallGauge:
    def test_fewer_than_two_future_partitions_raise_the_alert_gauge(
        self, day_partitioned_database: str
    ) -> None:
        from prometheus_client import REGISTRY

        engine = create_engine(day_partitioned_database, connect_args=connect_args("tests.partitions"))
        try:
            now = datetime(2027, 6, 1, 12, tzinfo=UTC)
            short = maintain(engine, PartitionPolicy(ahead=1), now=now)
            assert short.future == 1
            assert REGISTRY.get_sample_value("parley_usage_ledger_partition_shortfall") == 1
            assert REGISTRY.get_sample_value("parley_usage_ledger_future_partitions") == 1
            enough = maintain(engine, PartitionPolicy(ahead=2), now=now)
            assert enough.created == ["ledger_20270801"]
            assert REGISTRY.get_sample_value("parley_usage_ledger_partition_shortfall") == 0
        finally:
            engine.dispose()
