"""Ledger partition maintenance (run by parley-usage-beat, hourly by default, and at its start).

- Creates the partition of the current period and ``ahead`` future ones (UTC months, or days).
- Gives a partition to every period found in the default partition (an event whose period had none, e.g.
  one from far in the past or future), moving its rows out of the default partition in the same
  transaction that attaches the partition: nothing is lost and the dedup key keeps working (a redelivery
  of a moved event now routes to the new partition, where the row is).
- Detaches partitions that ended more than ``retention_days`` ago; they stay as plain tables for export.

Every DDL transaction sets ``lock_timeout``, so it never makes the worker's inserts queue behind a DDL
that itself waits on a long transaction; a timeout is retried with backoff. Partitions are created with
``CREATE TABLE`` + ``ATTACH PARTITION`` (which needs only SHARE UPDATE EXCLUSIVE on the ledger), not
``CREATE TABLE … PARTITION OF`` (ACCESS EXCLUSIVE on the ledger). An advisory lock keeps two beats from
maintaining at once.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Literal, TypeVar

from parley_common.db.engine import connect_args
from parley_common.logs import get_logger
from psycopg import errors as pg_errors
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from parley_usage.metrics import (
    DDL_LOCK_TIMEOUTS,
    DEFAULT_PARTITION_ROWS,
    FUTURE_PARTITIONS,
    PARTITION_SHORTFALL,
    PARTITIONS_CREATED,
    PARTITIONS_DETACHED,
)

log = get_logger(__name__)

Interval = Literal["month", "day"]
LEDGER = "usage.ledger"
DEFAULT_PARTITION = "ledger_default"
MIN_FUTURE = 2  # below this, parley_usage_ledger_partition_shortfall says so
_ADVISORY_NAMESPACE = 0x75736167  # "usag"
_BOUND = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")
_NAME = re.compile(r"^ledger_\d{8}$")

T = TypeVar("T")


@dataclass(frozen=True)
class PartitionPolicy:
    interval: Interval = "month"
    ahead: int = 3
    retention_days: int = 400
    lock_timeout_ms: int = 2000
    retries: int = 8


@dataclass(frozen=True)
class Partition:
    name: str
    start: datetime
    end: datetime


@dataclass
class MaintenanceReport:
    created: list[str] = field(default_factory=list)
    detached: list[str] = field(default_factory=list)
    future: int = 0
    default_rows: int = 0
    lock_timeouts: int = 0


def period_bounds(interval: Interval, at: datetime) -> tuple[datetime, datetime]:
    """[start, end) of the UTC month or day containing ``at``."""
    at = at.astimezone(UTC)
    if interval == "day":
        start = at.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1)
    start = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return start, (start + timedelta(days=32)).replace(day=1)


def partition_name(start: datetime) -> str:
    return f"ledger_{start:%Y%m%d}"


def list_partitions(conn: Connection) -> list[Partition]:
    """Range partitions attached to the ledger (not the default one), oldest first."""
    conn.execute(text("SET LOCAL TimeZone = 'UTC'"))  # pg_get_expr prints bounds in the session zone
    rows = conn.execute(
        text(
            """
            SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bound
            FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = CAST(:ledger AS regclass)
            """
        ),
        {"ledger": LEDGER},
    ).all()
    partitions = []
    for row in rows:
        match = _BOUND.search(row.bound)
        if match:
            start, end = (datetime.fromisoformat(value) for value in match.groups())
            partitions.append(Partition(row.name, start, end))
    return sorted(partitions, key=lambda p: p.start)


def maintain(engine: Engine, policy: PartitionPolicy, *, now: datetime | None = None) -> MaintenanceReport:
    """Create, fill and detach partitions as described in the module docstring; refresh the gauges."""
    now = now or datetime.now(UTC)
    report = MaintenanceReport()
    current_start, current_end = period_bounds(policy.interval, now)
    wanted = [current_start]
    cursor = current_end
    for _ in range(policy.ahead):
        wanted.append(cursor)
        cursor = period_bounds(policy.interval, cursor)[1]
    horizon = now - timedelta(days=policy.retention_days)
    with engine.begin() as conn:
        existing = list_partitions(conn)
        waiting = conn.execute(
            text(
                f"SELECT DISTINCT date_trunc(:unit, occurred_at AT TIME ZONE 'UTC') AS start "
                f"FROM usage.{DEFAULT_PARTITION}"
            ),
            {"unit": policy.interval},
        ).scalars()
        for start in waiting:
            start = start.replace(tzinfo=UTC)
            if period_bounds(policy.interval, start)[1] > horizon and start not in wanted:
                wanted.append(start)
    for start in sorted(wanted):
        end = period_bounds(policy.interval, start)[1]
        if any(p.start < end and start < p.end for p in existing):
            continue  # covered (or overlapped by a partition of another interval: left alone)
        name = partition_name(start)
        moved = _with_lock_retries(engine, policy, report, partial(_create, name=name, start=start, end=end))
        if moved is not None:
            report.created.append(name)
            PARTITIONS_CREATED.inc()
            log.info("partition.created", partition=name, start=start.isoformat(), moved_rows=moved)
    for partition in existing:
        if partition.end <= horizon:
            done = _with_lock_retries(engine, policy, report, partial(_detach, name=partition.name))
            if done:
                report.detached.append(partition.name)
                PARTITIONS_DETACHED.inc()
                log.info("partition.detached", partition=partition.name, end=partition.end.isoformat())
    with engine.begin() as conn:
        partitions = list_partitions(conn)
        report.future = sum(1 for p in partitions if p.start >= current_end)
        report.default_rows = int(
            conn.execute(text(f"SELECT count(*) FROM usage.{DEFAULT_PARTITION}")).scalar_one()
        )
    FUTURE_PARTITIONS.set(report.future)
    PARTITION_SHORTFALL.set(1 if report.future < MIN_FUTURE else 0)
    DEFAULT_PARTITION_ROWS.set(report.default_rows)
    return report


def maintain_sync(database_url: str, policy: PartitionPolicy) -> MaintenanceReport:
    """:func:`maintain` with a short-lived engine (start-up, tools, benchmarks)."""
    engine = create_engine(database_url, connect_args=connect_args("usage.maintenance"))
    try:
        return maintain(engine, policy)
    finally:
        engine.dispose()


def _create(conn: Connection, *, name: str, start: datetime, end: datetime) -> int | None:
    """Create (or re-attach) the partition ``name`` for [start, end), moving its rows out of the default
    partition; the number of rows moved, or None when another maintainer attached it first."""
    if not _NAME.match(name):
        raise ValueError(f"unexpected partition name {name!r}")
    existing = conn.execute(
        text(
            "SELECT c.oid, i.inhparent IS NOT NULL AS attached FROM pg_class c "
            "LEFT JOIN pg_inherits i ON i.inhrelid = c.oid "
            "WHERE c.oid = to_regclass(:n)"
        ),
        {"n": f"usage.{name}"},
    ).first()
    if existing is not None and existing.attached:
        return None
    columns = ", ".join(
        conn.execute(
            text(
                "SELECT quote_ident(attname) FROM pg_attribute WHERE attrelid = CAST(:t AS regclass) "
                "AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
            ),
            {"t": LEDGER},
        ).scalars()
    )
    # Inserts routed to the default partition wait for this short transaction; the others never do.
    conn.execute(text(f"LOCK TABLE usage.{DEFAULT_PARTITION} IN ACCESS EXCLUSIVE MODE"))
    if existing is None:
        conn.execute(
            text(f"CREATE TABLE usage.{name} (LIKE {LEDGER} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        )
    else:
        # A partition detached earlier whose period is wanted again (retention was shortened, then
        # lengthened): it holds that period's rows, so it goes back in rather than a new empty one.
        log.warning("partition.reattaching", partition=name)
    moved = conn.execute(
        text(
            f"WITH moved AS (DELETE FROM usage.{DEFAULT_PARTITION} "
            f"WHERE occurred_at >= :start AND occurred_at < :end RETURNING {columns}) "
            f"INSERT INTO usage.{name} ({columns}) SELECT {columns} FROM moved "
            f"ON CONFLICT DO NOTHING"
        ),
        {"start": start, "end": end},
    ).rowcount
    conn.execute(
        text(
            f"ALTER TABLE {LEDGER} ATTACH PARTITION usage.{name} "
            f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
        )
    )
    return int(moved or 0)


def _detach(conn: Connection, *, name: str) -> bool:
    if not _NAME.match(name):
        raise ValueError(f"unexpected partition name {name!r}")
    conn.execute(text(f"ALTER TABLE {LEDGER} DETACH PARTITION usage.{name}"))
    return True


def _with_lock_retries(
    engine: Engine, policy: PartitionPolicy, report: MaintenanceReport, work: Callable[[Connection], T]
) -> T:
    """Run ``work`` in its own transaction with ``lock_timeout``; retry it when a lock wait times out."""
    for attempt in range(policy.retries + 1):
        try:
            with engine.begin() as conn:
                conn.execute(text(f"SET LOCAL lock_timeout = '{int(policy.lock_timeout_ms)}ms'"))
                conn.execute(text("SET LOCAL TimeZone = 'UTC'"))
                conn.execute(text("SELECT pg_advisory_xact_lock(:ns, 1)"), {"ns": _ADVISORY_NAMESPACE})
                return work(conn)
        except OperationalError as exc:
            if not isinstance(exc.orig, pg_errors.LockNotAvailable) or attempt == policy.retries:
                raise
            report.lock_timeouts += 1
            DDL_LOCK_TIMEOUTS.inc()
            delay = min(0.2 * 2**attempt, 10.0) * (0.5 + random.random())
            log.warning("partition.lock_timeout", attempt=attempt + 1, retry_in=round(delay, 2))
            time.sleep(delay)
    raise AssertionError("unreachable")
