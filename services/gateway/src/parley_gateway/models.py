"""The gateway's tables (schema ``gateway``): accounts, credentials, plans, and its event outbox."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any
from uuid import UUID

from parley_common.db.base import TimestampMixin, schema_metadata
from parley_common.messaging.outbox import OutboxMixin
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA = "gateway"


class Model(DeclarativeBase):
    metadata = schema_metadata(SCHEMA)


class Plan(TimestampMixin, Model):
    """What a subscription allows. ``None`` in a limit column means unlimited."""

    __tablename__ = "plans"
    __table_args__ = (CheckConstraint("cache IN ('off', 'exact', 'semantic')", name="cache"),)

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    description: Mapped[str] = mapped_column(String(500), default="")
    allowed_models: Mapped[list[str]] = mapped_column(JSONB, default=list)  # empty: every model
    default_model: Mapped[str | None] = mapped_column(String(200))
    model_routes: Mapped[dict[str, str]] = mapped_column(JSONB, default=dict)  # requested → used
    requests_per_minute: Mapped[int | None] = mapped_column(Integer)
    tokens_per_minute: Mapped[int | None] = mapped_column(Integer)
    concurrent_streams: Mapped[int | None] = mapped_column(Integer)
    daily_token_quota: Mapped[int | None] = mapped_column(BigInteger)
    monthly_token_quota: Mapped[int | None] = mapped_column(BigInteger)
    # Reserved for a request that sets no max_tokens (the reservation must bound the reply).
    max_output_tokens: Mapped[int] = mapped_column(Integer, default=4096)
    cache: Mapped[str] = mapped_column(String(20), default="off")
    # Retrieval (chat reads both from the plan claims): documents a user may keep (0: no retrieval in the
    # plan; None: unlimited) and the largest document accepted, in UTF-8 bytes.
    rag_max_documents: Mapped[int | None] = mapped_column(Integer, default=10, server_default="10")
    rag_max_document_bytes: Mapped[int] = mapped_column(Integer, default=100_000, server_default="100000")
    # The catalogue's revision when this plan last changed (see PlanCatalog).
    revision: Mapped[int] = mapped_column(BigInteger, default=0)


class PlanCatalog(Model):
    """One row: the revision of the whole set of plans, raised by every change to any plan (deletions
    included), in the same transaction. Replicas compare their copy with the one published to Redis."""

    __tablename__ = "plan_catalog"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, default=1)
    revision: Mapped[int] = mapped_column(BigInteger, default=0)


class User(TimestampMixin, Model):
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("external_issuer", "external_subject"),)

    id: Mapped[UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(String(320), unique=True)  # stored normalised (lower-case)
    password_hash: Mapped[str | None] = mapped_column(String(255))  # None: signs in through OIDC only
    role: Mapped[str] = mapped_column(String(20), default="user")
    plan: Mapped[str] = mapped_column(
        String(50), ForeignKey("plans.name", onupdate="CASCADE"), default="free"
    )
    # Per-user exceptions to the plan: only the keys present apply (a null value means unlimited).
    plan_overrides: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    # Time of the plan change last applied, so an older plan.changed.v1 delivered late is ignored.
    plan_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    external_issuer: Mapped[str | None] = mapped_column(String(500))
    external_subject: Mapped[str | None] = mapped_column(String(255))
    # Raised on every change to the account's plan, role or API keys; replicas compare it with Redis's copy.
    revision: Mapped[int] = mapped_column(BigInteger, default=0)


class RefreshToken(Model):
    """One refresh token of a login session (``family_id``); each refresh replaces it with a new one."""

    __tablename__ = "refresh_tokens"

    id: Mapped[UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    family_id: Mapped[UUID] = mapped_column(index=True)
    user_id: Mapped[UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # SHA-256: the token is 256 random bits
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ApiKey(Model):
    __tablename__ = "api_keys"

    id: Mapped[UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(32))  # shown in listings so a key can be recognised
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AppliedEvent(Model):
    """Events this service has handled: the worker's idempotency record."""

    __tablename__ = "applied_events"

    event_id: Mapped[UUID] = mapped_column(primary_key=True)
    event_type: Mapped[str] = mapped_column(String(200))
    applied_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class OutboxMessage(OutboxMixin, Model):
    pass
