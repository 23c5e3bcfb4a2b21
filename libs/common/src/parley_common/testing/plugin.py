"""pytest fixtures: real services with per-session isolation, and process management.

- ``database_url``: a database of its own per test session (per xdist worker), migrated with the
  packages the ``parley_migrations`` fixture lists, dropped at the end.
- ``amqp_url``: a RabbitMQ vhost of its own per session; ``fresh_amqp_url`` one per test.
- ``redis_url`` / ``redis_prefix``: a key prefix of its own, its keys deleted at the end.
- ``processes``: a :class:`ProcessManager` whose processes are stopped (by PID) after the test, with
  their log tails printed when the test failed.

Resource names embed the creating process's PID, so leftovers of a crashed run are recognised and
dropped by the next run, without touching those of a run still going.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from parley_common.testing.processes import ProcessManager
from parley_common.testing.services import ServicesMissing, TestServices, discover

_TAG = re.compile(r"^parley_t_(\d+)_[0-9a-f]+$")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def _stale(name: str) -> bool:
    match = _TAG.match(name)
    return bool(match) and not psutil.pid_exists(int(match.group(1)))


@pytest.fixture(scope="session")
def parley_services() -> Iterator[TestServices]:
    try:
        services = discover()
    except ServicesMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    yield services
    services.stop()


@pytest.fixture(scope="session")
def run_tag() -> str:
    return f"parley_t_{os.getpid()}_{secrets.token_hex(3)}"


@pytest.fixture(scope="session")
def parley_migrations() -> list[tuple[str, str]]:
    """(package, schema) pairs to migrate in the session database; override in a conftest."""
    return []


@pytest.fixture(scope="session")
def database_url(
    parley_services: TestServices, run_tag: str, parley_migrations: list[tuple[str, str]]
) -> Iterator[str]:
    import psycopg
    from sqlalchemy.engine import make_url

    from parley_common.db.admin import drop_database, ensure_database
    from parley_common.db.migrations import upgrade

    admin = make_url(parley_services.database_url)
    with psycopg.connect(
        admin.set(drivername="postgresql").render_as_string(hide_password=False), autocommit=True
    ) as conn:
        for (name,) in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'parley_t_%'"
        ).fetchall():
            if _stale(name):
                drop_database(admin.set(database=name).render_as_string(hide_password=False))
    url = admin.set(drivername="postgresql+psycopg", database=run_tag).render_as_string(hide_password=False)
    ensure_database(url)
    for package, schema in parley_migrations:
        upgrade(package, url, schema)
    yield url
    drop_database(url)


@pytest.fixture(scope="session")
def amqp_url(parley_services: TestServices, run_tag: str) -> Iterator[str]:
    from parley_common.testing import rabbitmq

    for name in rabbitmq.list_vhosts():
        if _stale(name):
            rabbitmq.delete_vhost(name)
    url = rabbitmq.create_vhost(parley_services.rabbitmq_url, run_tag)
    yield url
    rabbitmq.delete_vhost(run_tag)


@pytest.fixture
def fresh_amqp_url(parley_services: TestServices, run_tag: str) -> Iterator[str]:
    """A vhost for this test alone (for tests that assert a queue is empty, or stop consumers)."""
    from parley_common.testing import rabbitmq

    vhost = f"{run_tag}{secrets.token_hex(3)}"
    url = rabbitmq.create_vhost(parley_services.rabbitmq_url, vhost)
    yield url
    rabbitmq.delete_vhost(vhost)


@pytest.fixture(scope="session")
def redis_url(parley_services: TestServices) -> str:
    return parley_services.redis_url


@pytest.fixture(scope="session")
def redis_prefix(redis_url: str, run_tag: str) -> Iterator[str]:
    import redis

    prefix = f"{run_tag}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(match=prefix + "*", count=1000):
            client.delete(key)
    finally:
        client.close()


@pytest.fixture
def processes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProcessManager]:
    manager = ProcessManager(tmp_path / "logs")
    yield manager
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for _process in manager.processes:
            pass
    manager.stop_all()
