"""Fixtures of the usage tests, and the checker's figures in the test output."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from parley_common.db.engine import connect_args
from parley_usage.partitions import PartitionPolicy, maintain_sync
from sqlalchemy import create_engine, text

from tests.support.platform import PlatformConfig

FIGURES = "usage figures"


@pytest.fixture(scope="session")
def ledger_partitions(database_url: str) -> str:
    """The session database with the ledger partitions parley-usage-beat would have created."""
    maintain_sync(database_url, PartitionPolicy())
    return database_url


@pytest.fixture
def usage_env(platform_config: PlatformConfig, fresh_amqp_url: str, ledger_partitions: str) -> dict[str, str]:
    """Environment of usage (and chat relay) processes: the session database, a vhost of this test's own.

    The session database's chat outbox may hold rows other tests left unpublished (chat tests that run no
    relay); they are marked published first, or this test's relay would feed them to its worker. Tests of
    one xdist worker run one at a time, so no other test is using them.
    """
    engine = create_engine(ledger_partitions, connect_args=connect_args("tests.usage"))
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE chat.outbox SET published_at = now() WHERE published_at IS NULL"))
    finally:
        engine.dispose()
    return {**platform_config.base_env(), "PARLEY_RABBITMQ_URL": fresh_amqp_url}


@pytest.fixture
def figures(record_property: Any) -> Iterator[list[str]]:
    """Lines a test wants in the run's summary (checker verdicts, timings); printed at the end."""
    lines: list[str] = []
    yield lines
    for line in lines:
        record_property(FIGURES, line)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    lines = [
        f"{report.nodeid.split('::')[-1]}: {value}"
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "teardown" or getattr(report, "when", None) == "call"
        for name, value in getattr(report, "user_properties", ())
        if name == FIGURES
    ]
    if lines:
        terminalreporter.section(FIGURES)
        for line in dict.fromkeys(lines):
            terminalreporter.write_line(line)
