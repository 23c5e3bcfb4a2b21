"""Direct reads of the test database, for assertions."""

from __future__ import annotations

from typing import Any

from parley_common.db.engine import connect_args
from sqlalchemy import create_engine, text


def query(database_url: str, sql: str, **params: Any) -> list[dict[str, Any]]:
    engine = create_engine(database_url, connect_args=connect_args("tests"))
    try:
        with engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(text(sql), params)]
    finally:
        engine.dispose()


def execute(database_url: str, sql: str, **params: Any) -> int:
    """Run a statement in its own committed transaction; returns the affected row count."""
    engine = create_engine(database_url, connect_args=connect_args("tests"))
    try:
        with engine.begin() as conn:
            return int(conn.execute(text(sql), params).rowcount or 0)
    finally:
        engine.dispose()


def ledger_rows(database_url: str, user_id: str) -> list[dict[str, Any]]:
    return query(
        database_url, "SELECT * FROM usage.ledger WHERE user_id = :u ORDER BY occurred_at", u=user_id
    )
