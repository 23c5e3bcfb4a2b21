"""Notify's tables (schema ``notify``): who to write to, what was sent, and whose account is gone."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from parley_common.db.base import schema_metadata
from sqlalchemy import DateTime, Integer, String, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA = "notify"


class Model(DeclarativeBase):
    metadata = schema_metadata(SCHEMA)


class Recipient(Model):
    """A user's email address, learned from ``user.registered.v1`` (notify never reads the gateway's tables)."""

    __tablename__ = "recipients"

    user_id: Mapped[UUID] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    registered_event_id: Mapped[UUID]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class SentEmail(Model):
    """The sent log: one row per event that became an email, written once the SMTP server took it (or
    refused it for good). An event already here is never sent again."""

    __tablename__ = "sent_emails"

    event_id: Mapped[UUID] = mapped_column(primary_key=True)
    event_type: Mapped[str] = mapped_column(String(200))
    user_id: Mapped[UUID] = mapped_column(index=True)
    recipient: Mapped[str] = mapped_column(String(320))
    template: Mapped[str] = mapped_column(String(50))
    message_id: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20))  # sent | failed
    attempts: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(500))
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ErasedUser(Model):
    """A deleted account (``user.deleted.v1``): its address and sent log are gone, and no later event
    (a late quota email, a redelivered registration) writes to it again. Only the opaque user id stays."""

    __tablename__ = "erased_users"

    user_id: Mapped[UUID] = mapped_column(primary_key=True)
    event_id: Mapped[UUID]  # the user.deleted.v1 that erased it (its confirmation's Message-ID)
    confirmation: Mapped[str] = mapped_column(String(20))  # sent | failed (refused for good)
    erased_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
