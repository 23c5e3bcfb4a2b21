"""The gateway's tables (schema ``gateway``)."""

from __future__ import annotations

import uuid
from uuid import UUID

from parley_common.db.base import TimestampMixin, schema_metadata
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA = "gateway"


class Model(DeclarativeBase):
    metadata = schema_metadata(SCHEMA)


class User(TimestampMixin, Model):
    __tablename__ = "users"

    id: Mapped[UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(String(320), unique=True)  # stored normalised (lower-case)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(20), default="user")
    plan: Mapped[str] = mapped_column(String(50), default="free")
