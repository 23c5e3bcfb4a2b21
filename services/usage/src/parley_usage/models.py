"""Usage's tables (schema ``usage``).

- ``ledger``: one row per model call, partitioned by range on the call's own time (``occurred_at``), with
  a default partition so an event for a period without a partition is kept (maintenance moves it into
  its partition once that exists). The primary key ``(event_id, occurred_at)`` is the dedup key: a unique
  key of a partitioned table must contain the partition column, and a redelivered event carries the same
  time, so it lands in the same partition and conflicts there.
- ``daily_rollups`` and ``period_totals``: aggregates updated in the same transaction as the ledger rows
  they count, so they always agree with it.
- ``quota_thresholds``: which 80 % / 100 % crossings were announced (the unique key makes it once).
- ``provider_usage``: what the model provider says it served, per day (see ``drift.py``).
- ``outbox``: events usage emits (``quota.threshold_crossed.v1``), published by ``parley-usage-relay``.
"""

from __future__ import annotations

from datetime import date, datetime
from uuid import UUID

from parley_common.db.base import schema_metadata
from parley_common.messaging.outbox import OutboxMixin
from sqlalchemy import BigInteger, Boolean, Date, DateTime, Index, Integer, SmallInteger, String, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA = "usage"


class Model(DeclarativeBase):
    metadata = schema_metadata(SCHEMA)


class LedgerEntry(Model):
    """One model call, as billed. Append-only; one row per ``usage.tokens_consumed.v1`` event id."""

    __tablename__ = "ledger"
    __table_args__ = (
        Index("ix_ledger_user_id_occurred_at", "user_id", "occurred_at"),
        {"postgresql_partition_by": "RANGE (occurred_at)"},
    )

    event_id: Mapped[UUID] = mapped_column(primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    user_id: Mapped[UUID]
    request_id: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(200))
    provider: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    cached: Mapped[bool] = mapped_column(Boolean)
    estimated: Mapped[bool] = mapped_column(Boolean)
    plan: Mapped[str | None] = mapped_column(String(50))
    api_key_id: Mapped[UUID | None]
    conversation_id: Mapped[UUID | None]
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class DailyRollup(Model):
    """Usage of one user, one UTC day, one model and provider."""

    __tablename__ = "daily_rollups"

    user_id: Mapped[UUID] = mapped_column(primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True, index=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    provider: Mapped[str] = mapped_column(String(100), primary_key=True)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    completion_tokens: Mapped[int] = mapped_column(BigInteger)
    requests: Mapped[int] = mapped_column(BigInteger)
    cached_requests: Mapped[int] = mapped_column(BigInteger)
    estimated_requests: Mapped[int] = mapped_column(BigInteger)
    cached_tokens: Mapped[int] = mapped_column(BigInteger)
    estimated_tokens: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class PeriodTotal(Model):
    """Tokens (prompt + completion) of one user in one quota period (UTC day or month)."""

    __tablename__ = "period_totals"
    __table_args__ = (Index("ix_period_totals_period_period_start", "period", "period_start"),)

    user_id: Mapped[UUID] = mapped_column(primary_key=True)
    period: Mapped[str] = mapped_column(String(5), primary_key=True)
    period_start: Mapped[date] = mapped_column(Date, primary_key=True)
    tokens: Mapped[int] = mapped_column(BigInteger)


class QuotaThreshold(Model):
    """A threshold crossing that was announced (at most one per user, period and threshold)."""

    __tablename__ = "quota_thresholds"

    user_id: Mapped[UUID] = mapped_column(primary_key=True)
    period: Mapped[str] = mapped_column(String(5), primary_key=True)
    period_start: Mapped[date] = mapped_column(Date, primary_key=True)
    threshold_percent: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    quota_tokens: Mapped[int] = mapped_column(BigInteger)
    used_tokens: Mapped[int] = mapped_column(BigInteger)
    event_id: Mapped[UUID]
    crossed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ProviderUsage(Model):
    """Usage the provider reports for one UTC day and model (imported from its usage export)."""

    __tablename__ = "provider_usage"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    provider: Mapped[str] = mapped_column(String(100), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    completion_tokens: Mapped[int] = mapped_column(BigInteger)
    requests: Mapped[int | None] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(String(200))
    imported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class OutboxMessage(OutboxMixin, Model):
    pass
