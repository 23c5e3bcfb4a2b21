"""Usage's tables (schema ``usage``)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from parley_common.db.base import schema_metadata
from sqlalchemy import BigInteger, Boolean, DateTime, Identity, Integer, String, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA = "usage"


class Model(DeclarativeBase):
    metadata = schema_metadata(SCHEMA)


class LedgerEntry(Model):
    """One model call, as billed. Append-only; one row per ``usage.tokens_consumed.v1`` event id."""

    __tablename__ = "ledger"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    event_id: Mapped[UUID] = mapped_column(unique=True)
    user_id: Mapped[UUID] = mapped_column(index=True)
    request_id: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(200))
    provider: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    cached: Mapped[bool] = mapped_column(Boolean)
    estimated: Mapped[bool] = mapped_column(Boolean)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
