"""Migration 0002 turns the first ledger into the partitioned one without losing a row."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from parley_common.db.admin import drop_database, ensure_database
from parley_common.db.migrations import upgrade
from parley_common.testing import resources
from parley_common.testing import services as test_services
from sqlalchemy.engine import make_url

from tests.usage.support import execute, rows, scalar


@pytest.fixture
def empty_database(parley_services: test_services.TestServices) -> Iterator[str]:
    url = (
        make_url(parley_services.database_url)
        .set(drivername="postgresql+psycopg", database=resources.new_tag())
        .render_as_string(hide_password=False)
    )
    ensure_database(url)
    yield url
    drop_database(url)


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
