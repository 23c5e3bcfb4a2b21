"""Migration 0002 turns the first ledger into the partitioned one without losing a row."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from parley_common.db.migrations import upgrade

from tests.support.db import execute
from tests.usage.support import rows, scalar


def test_rows_of_the_first_ledger_are_carried_over_and_rolled_up(empty_database: str) -> None:
    upgrade("parley_usage", empty_database, "usage", "0001")
    user = uuid.uuid4()
    for n, at in enumerate([datetime(2026, 3, 1, 10, tzinfo=UTC), datetime(2026, 3, 2, 9, tzinfo=UTC)]):
        execute(
            empty_database,
            "INSERT INTO usage.ledger (event_id, user_id, request_id, model, provider, status, prompt_tokens, "
            "completion_tokens, cached, estimated, occurred_at) "
            "VALUES (:e, :u, :r, 'm', 'p', 'completed', 10, 5, false, :est, :at)",
            e=uuid.uuid4(),
            u=user,
            r=f"r{n}",
            est=n == 1,
            at=at,
        )
    upgrade("parley_usage", empty_database, "usage")

    assert scalar(empty_database, "SELECT count(*) FROM usage.ledger WHERE user_id = :u", u=user) == 2
    assert scalar(empty_database, "SELECT to_regclass('usage.ledger_v1')") is None
    partitioned = scalar(
        empty_database, "SELECT count(*) FROM pg_partitioned_table WHERE partrelid = 'usage.ledger'::regclass"
    )
    assert partitioned == 1
    days = rows(
        empty_database,
        "SELECT day, requests, estimated_requests FROM usage.daily_rollups WHERE user_id = :u ORDER BY day",
        u=user,
    )
    assert [(str(r.day), r.requests, r.estimated_requests) for r in days] == [
        ("2026-03-01", 1, 0),
        ("2026-03-02", 1, 1),
    ]
    month = scalar(
        empty_database,
        "SELECT tokens FROM usage.period_totals WHERE user_id = :u AND period = 'month' AND period_start = '2026-03-01'",
        u=user,
    )
    assert month == 30


def test_the_downgrade_keeps_the_rows(empty_database: str) -> None:
    from alembic import command
    from parley_common.db.migrations import alembic_config

    upgrade("parley_usage", empty_database, "usage")
    event = uuid.uuid4()
    execute(
        empty_database,
        "INSERT INTO usage.ledger (event_id, occurred_at, user_id, request_id, model, provider, status, "
        "prompt_tokens, completion_tokens, cached, estimated) "
        "VALUES (:e, now(), :u, 'r', 'm', 'p', 'completed', 1, 2, false, false)",
        e=event,
        u=uuid.uuid4(),
    )
    command.downgrade(alembic_config("parley_usage", empty_database, "usage"), "0001")
    assert scalar(empty_database, "SELECT count(*) FROM usage.ledger WHERE event_id = :e", e=event) == 1
