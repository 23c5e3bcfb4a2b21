"""Webhooks' tables (schema ``webhooks``).

An endpoint has one or two active signing secrets (two while a rotation overlaps). Every event an endpoint
subscribed to becomes one delivery row (unique per endpoint and event, so a redelivered event fans out
once); every HTTP try of a delivery is an attempt row. Retries are not messages waiting in the broker:
a pending delivery's ``next_attempt_at`` says when beat hands it to a worker again.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any
from uuid import UUID

from parley_common.db.base import schema_metadata
from parley_common.messaging.outbox import OutboxMixin
from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA = "webhooks"


class Model(DeclarativeBase):
    metadata = schema_metadata(SCHEMA)


class Endpoint(Model):
    """A URL a user asked us to POST their events to."""

    __tablename__ = "endpoints"

    id: Mapped[UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[UUID] = mapped_column(index=True)
    url: Mapped[str] = mapped_column(String(2048))
    description: Mapped[str] = mapped_column(String(500), server_default="")
    event_types: Mapped[list[str]] = mapped_column(ARRAY(String(200)))
    enabled: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    disabled_reason: Mapped[str | None] = mapped_column(String(20))
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Start of the current run of failures (None after a success): the disable clock.
    failing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_success_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    modified_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class EndpointSecret(Model):
    """A signing secret; it signs until ``expires_at`` (never, for the current one)."""

    __tablename__ = "endpoint_secrets"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    endpoint_id: Mapped[UUID] = mapped_column(ForeignKey("endpoints.id", ondelete="CASCADE"), index=True)
    secret: Mapped[str] = mapped_column(Text)  # Fernet token (parley_webhooks.secret_box)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Delivery(Model):
    """One event for one endpoint, until it succeeds or its retries run out."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id"),
        # beat's poll: pending rows by due time; partial, so finished deliveries cost nothing.
        Index("ix_deliveries_due", "next_attempt_at", postgresql_where=text("status = 'pending'")),
        Index("ix_deliveries_user_created", "user_id", "created_at"),
        Index("ix_deliveries_endpoint_created", "endpoint_id", "created_at"),
    )

    id: Mapped[UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    endpoint_id: Mapped[UUID] = mapped_column(ForeignKey("endpoints.id", ondelete="CASCADE"))
    user_id: Mapped[UUID]
    event_id: Mapped[UUID]
    event_type: Mapped[str] = mapped_column(String(200))
    webhook_id: Mapped[str] = mapped_column(String(100))
    # The exact bytes signed and sent, identical on every retry.
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), server_default="pending")  # pending|succeeded|failed
    attempt_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # Attempts since the delivery was created or last replayed: the position in the retry schedule.
    round_attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    next_attempt_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    # Set when beat hands the delivery to a worker; a task carrying another token is stale.
    dispatch_token: Mapped[UUID | None]
    last_status_code: Mapped[int | None] = mapped_column(SmallInteger)
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    succeeded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Attempt(Model):
    """One HTTP try of a delivery, as it went."""

    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    delivery_id: Mapped[UUID] = mapped_column(ForeignKey("deliveries.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    scheduled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # succeeded | failed | timeout | network_error | refused_address | interrupted
    outcome: Mapped[str | None] = mapped_column(String(20))
    status_code: Mapped[int | None] = mapped_column(SmallInteger)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    address: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(String(500))
    response_body: Mapped[str | None] = mapped_column(Text)
    response_bytes: Mapped[int | None] = mapped_column(Integer)
    response_truncated: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))


class InboundEvent(Model):
    """A provider's webhook we accepted, by the provider's event id: a replay of it is a no-op."""

    __tablename__ = "inbound_events"

    provider: Mapped[str] = mapped_column(String(30), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    event_type: Mapped[str] = mapped_column(String(200))
    outcome: Mapped[str] = mapped_column(String(40))
    user_id: Mapped[UUID | None]
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class BillingPlan(Model):
    """The plan billing last gave a user, and the provider time of that event (older events lose)."""

    __tablename__ = "billing_plans"

    user_id: Mapped[UUID] = mapped_column(primary_key=True)
    plan: Mapped[str] = mapped_column(String(50))
    event_id: Mapped[str] = mapped_column(String(255))
    event_created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class OutboxMessage(OutboxMixin, Model):
    pass
