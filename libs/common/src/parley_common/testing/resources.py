"""Isolated resources on the real services, as plain functions (pytest fixtures and benchmarks use them).

Names embed the creating process's PID (``parley_t_<pid>_<hex>``) so a later run can tell leftovers of
a crashed run (PID gone) from resources of a run still going, and drop only the former.
"""

from __future__ import annotations

import os
import re
import secrets

import psutil
import psycopg
from sqlalchemy.engine import make_url

from parley_common.db.admin import drop_database, ensure_database
from parley_common.db.migrations import upgrade

_TAG = re.compile(r"^parley_[tb]_(\d+)_[0-9a-f]+$")


def new_tag(kind: str = "t") -> str:
    """A resource name unique to this process: ``parley_t_<pid>_<hex>``."""
    return f"parley_{kind}_{os.getpid()}_{secrets.token_hex(3)}"


def is_stale(name: str) -> bool:
    match = _TAG.match(name)
    return match is not None and not psutil.pid_exists(int(match.group(1)))


def drop_stale_databases(admin_url: str) -> None:
    admin = make_url(admin_url)
    conninfo = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        names = [
            row[0] for row in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'parley\\_%'")
        ]
    for name in names:
        if is_stale(name):
            drop_database(admin.set(database=name).render_as_string(hide_password=False))


def create_database(admin_url: str, name: str, migrations: list[tuple[str, str]]) -> str:
    """Create database ``name`` next to ``admin_url``'s, migrate the given schemas, return its URL."""
    url = (
        make_url(admin_url)
        .set(drivername="postgresql+psycopg", database=name)
        .render_as_string(hide_password=False)
    )
    ensure_database(url)
    for package, schema in migrations:
        upgrade(package, url, schema)
    return url


def drop_stale_vhosts() -> None:
    from parley_common.testing import rabbitmq

    for name in rabbitmq.list_vhosts():
        if is_stale(name):
            rabbitmq.delete_vhost(name)


def delete_redis_prefix(redis_url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(match=prefix + "*", count=1000):
            client.delete(key)
    finally:
        client.close()
