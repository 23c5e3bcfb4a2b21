"""Alembic, one migration history per service schema, run without an ``alembic.ini``.

A service keeps its revisions in ``parley_<service>/migrations`` (inside the package, so an installed
image can migrate) with a three-line ``env.py`` that calls :func:`run_env`. ``upgrade`` is what the
``parley-<service>-migrate`` entry point, ``make run`` and the Helm migration Job call.
"""

from __future__ import annotations

import zlib

from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData, create_engine, pool, text
from sqlalchemy.engine import Connection

from parley_common.db.engine import connect_args


def alembic_config(package: str, url: str, schema: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", f"{package}:migrations")
    cfg.attributes["url"] = url
    cfg.attributes["schema"] = schema
    return cfg


def upgrade(package: str, url: str, schema: str, revision: str = "head") -> None:
    """Bring ``schema`` to ``revision``."""
    command.upgrade(alembic_config(package, url, schema), revision)


def _lock_key(schema: str) -> int:
    return zlib.crc32(f"parley.migrate.{schema}".encode())


def _run(connection: Connection, target_metadata: MetaData, schema: str) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table_schema=schema,
        include_schemas=True,
        include_name=lambda name, type_, _parent: type_ != "schema" or name == schema,
        compare_type=True,
    )
    with context.begin_transaction():
        # A transaction-scoped lock (safe through PgBouncer): two pods migrating at once take turns.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(schema)})
        connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        context.run_migrations()


def run_env(target_metadata: MetaData) -> None:
    """Body of a service's ``migrations/env.py`` (online mode only: we always migrate a live database)."""
    url: str = context.config.attributes["url"]
    schema: str = context.config.attributes["schema"]
    engine = create_engine(url, poolclass=pool.NullPool, connect_args=connect_args(f"{schema}.migrate"))
    with engine.connect() as connection:
        _run(connection, target_metadata, schema)
    engine.dispose()


def registered() -> list[tuple[str, str]]:
    """(package, schema) of every installed service that owns a schema.

    Services declare themselves with an entry point in the ``parley.migrations`` group
    (``<schema> = "parley_<service>"``), so tooling never needs a hand-kept list.
    """
    from importlib.metadata import entry_points

    return sorted((ep.value, ep.name) for ep in entry_points(group="parley.migrations"))
