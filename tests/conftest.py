"""Suite-wide fixtures. Everything runs against real PostgreSQL, Redis and RabbitMQ."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from parley_common.auth.keys import generate_private_key_pem
from parley_common.db.admin import drop_database, ensure_database
from parley_common.db.migrations import registered
from parley_common.testing import resources
from parley_common.testing.processes import ProcessManager
from parley_common.testing.services import TestServices
from sqlalchemy.engine import make_url

from tests.support.outbox import Outbox, private_outbox
from tests.support.platform import Platform, PlatformConfig, start_platform

pytest_plugins = ["parley_common.testing.plugin"]


@pytest.fixture(scope="session")
def parley_migrations() -> list[tuple[str, str]]:
    return registered()


@pytest.fixture(scope="session")
def signing_key_pem() -> str:
    return generate_private_key_pem()


@pytest.fixture(scope="session")
def platform_config(
    database_url: str, amqp_url: str, redis_url: str, redis_prefix: str, signing_key_pem: str
) -> PlatformConfig:
    return PlatformConfig(
        database_url=database_url,
        amqp_url=amqp_url,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        signing_key_pem=signing_key_pem,
    )


@pytest.fixture(scope="module")
def platform(platform_config: PlatformConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """The whole spine as real processes on loopback, shared by the tests of one module."""
    manager = ProcessManager(Path(tmp_path_factory.mktemp("platform")))
    try:
        yield start_platform(manager, platform_config)
    finally:
        manager.stop_all()


@pytest.fixture
def outbox(database_url: str) -> Iterator[Outbox]:
    """An outbox table of this test's own (see tests/support/outbox.py)."""
    with private_outbox(database_url) as table:
        yield table


@pytest.fixture
def empty_database(parley_services: TestServices) -> Iterator[str]:
    """A database of its own with no schema at all, for tests of the migrations themselves."""
    url = (
        make_url(parley_services.database_url)
        .set(drivername="postgresql+psycopg", database=resources.new_tag())
        .render_as_string(hide_password=False)
    )
    ensure_database(url)
    yield url
    drop_database(url)
