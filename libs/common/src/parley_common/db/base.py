"""Conventions for every service's declarative base.

Each service owns one PostgreSQL schema and declares ``class Model(DeclarativeBase)`` with
``metadata = schema_metadata("<service>")``, so constraint names are stable for Alembic and no two
services' tables can collide.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, MetaData, func
from sqlalchemy.orm import Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def schema_metadata(schema: str) -> MetaData:
    """MetaData bound to one service schema, with Parley's naming convention."""
    return MetaData(schema=schema, naming_convention=NAMING_CONVENTION)


class TimestampMixin:
    """``created_at`` / ``modified_at`` as TIMESTAMPTZ, set by the database."""

    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    modified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), onupdate=func.now())
