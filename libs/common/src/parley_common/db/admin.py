"""Creating and dropping whole databases (``make run`` set-up and the test fixtures)."""

from __future__ import annotations

import re

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

_SAFE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _libpq_parts(url: str) -> tuple[str, str]:
    """(libpq conninfo for the maintenance database, target database name)."""
    parsed = make_url(url)
    database = parsed.database or "parley"
    conninfo = parsed.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    return conninfo, database


def ensure_database(url: str) -> bool:
    """Create the database named in ``url`` if it does not exist; True when it was created."""
    conninfo, database = _libpq_parts(url)
    if not _SAFE_NAME.match(database):
        raise ValueError(f"refusing unusual database name {database!r}")
    with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if exists:
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        return True


def drop_database(url: str) -> None:
    """Drop the database named in ``url``, disconnecting its sessions (tests only)."""
    conninfo, database = _libpq_parts(url)
    with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
