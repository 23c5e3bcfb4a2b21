"""An outbox table of a test's own, with the columns every service's outbox has."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from parley_common.db.base import schema_metadata
from parley_common.db.engine import connect_args
from parley_common.messaging.outbox import OutboxMixin
from sqlalchemy import Table, create_engine, text
from sqlalchemy.orm import DeclarativeBase


@dataclass
class Outbox:
    database_url: str
    table: Table

    @property
    def name(self) -> str:
        return f"{self.table.schema}.{self.table.name}"


@contextmanager
def private_outbox(database_url: str) -> Iterator[Outbox]:
    """Create the table in a schema of its own, drop it afterwards: no other test's rows can be relayed."""
    schema = f"outbox_test_{secrets.token_hex(4)}"

    class Base(DeclarativeBase):
        metadata = schema_metadata(schema)

    class TestOutbox(OutboxMixin, Base):
        pass

    engine = create_engine(database_url, connect_args=connect_args("tests.outbox"))
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        Base.metadata.create_all(conn)
    try:
        yield Outbox(database_url, TestOutbox.outbox_table())
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()
