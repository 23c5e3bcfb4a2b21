"""The transactional outbox: events written in the same transaction as the state they describe.

A service declares ``class OutboxMessage(OutboxMixin, Model)`` in its own schema and adds events with
``session.add(OutboxMessage.from_event(event))`` inside the business transaction; the relay
(:mod:`parley_common.messaging.relay`) publishes them after commit. If the transaction rolls back, the
event never existed; if it commits, the event will be published at least once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Self, cast
from uuid import UUID

from sqlalchemy import BigInteger, DateTime, Identity, Index, Integer, String, Table, Text, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, declared_attr, mapped_column

from parley_common.events import Event


class OutboxMixin:
    """Columns of an outbox table (add to a declarative model of the service's schema)."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    event_id: Mapped[UUID] = mapped_column(unique=True)
    event_type: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Failed publishes (refused by the broker, unroutable) back off through next_attempt_at.
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:
        # The relay's query: pending rows in order. Partial, so published rows cost nothing.
        return (Index("ix_outbox_pending", "id", postgresql_where=text("published_at IS NULL")),)

    @classmethod
    def from_event(cls, event: Event) -> Self:
        """An outbox row for ``event``; add it to the session of the business transaction."""
        return cls(  # type: ignore[call-arg]  # the declarative model provides the keyword constructor
            event_id=event.id,
            event_type=event.type,
            payload=event.model_dump(mode="json"),
        )

    @classmethod
    def outbox_table(cls) -> Table:
        """The mapped table (what the relay reads)."""
        return cast(Table, cls.__table__)  # type: ignore[attr-defined]


def create_outbox_table_v1(schema: str) -> None:
    """Alembic operations that create an outbox table matching :class:`OutboxMixin` (version 1).

    Called from each service's migration; frozen, so an old migration always builds the same table.
    """
    import sqlalchemy as sa
    from alembic import op

    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("event_type", sa.String(200), nullable=False),
        sa.Column("payload", JSONB(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column(
            "next_attempt_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text()),
        sa.Column("published_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        sa.UniqueConstraint("event_id", name="uq_outbox_event_id"),
        schema=schema,
    )
    op.create_index(
        "ix_outbox_pending", "outbox", ["id"], schema=schema, postgresql_where=sa.text("published_at IS NULL")
    )
