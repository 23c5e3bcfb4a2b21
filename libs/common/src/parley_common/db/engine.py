"""SQLAlchemy engines over psycopg 3: async for the APIs, sync for the Celery workers.

Prepared statements are off (``prepare_threshold=None``) so every engine works through PgBouncer in
transaction mode, where consecutive statements may land on different server connections.
"""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

from parley_common.settings import DatabaseSettings


def _url(value: SecretStr | str) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def connect_args(application_name: str) -> dict[str, Any]:
    """psycopg arguments every Parley connection uses."""
    return {"prepare_threshold": None, "application_name": application_name[:63]}


def create_async_db_engine(
    url: SecretStr | str, *, application_name: str, pool_size: int = 10, max_overflow: int = 10, **kwargs: Any
) -> AsyncEngine:
    """An async engine; ``application_name`` shows in ``pg_stat_activity`` (``chat.api``)."""
    return create_async_engine(
        _url(url),
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
        connect_args=connect_args(application_name),
        **kwargs,
    )


def create_sync_db_engine(
    url: SecretStr | str, *, application_name: str, pool_size: int = 5, max_overflow: int = 5, **kwargs: Any
) -> Engine:
    """A sync engine for Celery tasks and maintenance jobs."""
    return create_engine(
        _url(url),
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
        connect_args=connect_args(application_name),
        **kwargs,
    )


def async_engine(settings: DatabaseSettings, application_name: str, *, replica: bool = False) -> AsyncEngine:
    """One async engine: the primary's, or with ``replica=True`` the read replica's when one is configured
    (the primary's otherwise). For processes that only write, or only read."""
    use_replica = replica and settings.database_read_url is not None
    return create_async_db_engine(
        settings.database_read_url if use_replica and settings.database_read_url else settings.database_url,
        application_name=application_name + (".read" if use_replica else ""),
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
    )


def async_engines(settings: DatabaseSettings, application_name: str) -> tuple[AsyncEngine, AsyncEngine]:
    """(write engine, read engine); the read engine is the writer itself unless a replica is configured."""
    writer = create_async_db_engine(
        settings.database_url,
        application_name=application_name,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
    )
    if settings.database_read_url is None:
        return writer, writer
    reader = create_async_db_engine(
        settings.database_read_url,
        application_name=application_name + ".read",
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
    )
    return writer, reader


def async_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit (responses are built after it)."""
    return async_sessionmaker(engine, expire_on_commit=False)


def sync_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


async def ping(engine: AsyncEngine) -> None:
    """Readiness check: one round trip."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
