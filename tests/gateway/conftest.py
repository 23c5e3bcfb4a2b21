"""Fixtures for the gateway's tests: a module-scoped stack of real processes."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from parley_common.testing.net import free_port
from parley_common.testing.processes import ProcessManager

from tests.gateway.support import Stack, start_stack
from tests.support.platform import PlatformConfig


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessManager]:
    processes = ProcessManager(Path(tmp_path_factory.mktemp("gateway")))
    try:
        yield processes
    finally:
        processes.stop_all()


@pytest.fixture(scope="module")
def echo_url(manager: ProcessManager) -> str:
    """A recording stand-in for the services behind the gateway (tests/gateway/echo_upstream.py)."""
    port = free_port()
    manager.spawn(
        "echo",
        [sys.executable, "-m", "tests.gateway.echo_upstream", "--port", str(port)],
        ready_url=f"http://127.0.0.1:{port}/livez",
    )
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def stack(manager: ProcessManager, platform_config: PlatformConfig) -> Stack:
    return start_stack(manager, platform_config)
