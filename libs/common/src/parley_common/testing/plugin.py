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

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from parley_common.db.admin import drop_database
from parley_common.testing import resources
from parley_common.testing.processes import ProcessManager
from parley_common.testing.services import ServicesMissing, TestServices, discover


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item) -> Iterator[None]:
    outcome: Any = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


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
    return resources.new_tag()


@pytest.fixture(scope="session")
def parley_migrations() -> list[tuple[str, str]]:
    """(package, schema) pairs to migrate in the session database; override in a conftest."""
    return []


@pytest.fixture(scope="session")
def database_url(
    parley_services: TestServices, run_tag: str, parley_migrations: list[tuple[str, str]]
) -> Iterator[str]:
    resources.drop_stale_databases(parley_services.database_url)
    url = resources.create_database(parley_services.database_url, run_tag, parley_migrations)
    yield url
    drop_database(url)


@pytest.fixture(scope="session")
def amqp_url(parley_services: TestServices, run_tag: str) -> Iterator[str]:
    from parley_common.testing import rabbitmq

    resources.drop_stale_vhosts()
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
    prefix = f"{run_tag}:"
    yield prefix
    resources.delete_redis_prefix(redis_url, prefix)


@pytest.fixture
def processes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProcessManager]:
    manager = ProcessManager(tmp_path / "logs")
    yield manager
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for _process in manager.processes:
            pass
    manager.stop_all()
