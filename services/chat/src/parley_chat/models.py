"""Chat's tables (schema ``chat``)."""

from __future__ import annotations

import uuid
from datetime import datetime
from uuid import UUID

from parley_common.db.base import schema_metadata
from parley_common.messaging.outbox import OutboxMixin
from sqlalchemy import DateTime, Integer, String, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA = "chat"


class Model(DeclarativeBase):
    metadata = schema_metadata(SCHEMA)


class Completion(Model):
    """One model call made on a user's behalf: the record its usage event describes."""

    __tablename__ = "completions"

    id: Mapped[UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[UUID] = mapped_column(index=True)
    request_id: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(200))
    provider: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class OutboxMessage(OutboxMixin, Model):
    pass
