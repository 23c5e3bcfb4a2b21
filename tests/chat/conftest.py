"""Fixtures of chat's tests: one platform per test module (gateway + chat over two fake providers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from parley_common.testing.processes import ProcessManager

from tests.chat.support import ChatStack, configure, start_stack
from tests.support.platform import PlatformConfig


@pytest.fixture(scope="module")
def stack(platform_config: PlatformConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatStack]:
    manager = ProcessManager(Path(tmp_path_factory.mktemp("chat-stack")))
    try:
        yield start_stack(manager, platform_config)
    finally:
        manager.stop_all()


@pytest.fixture
def providers(stack: ChatStack) -> dict[str, str]:
    """The stack's fake providers, reset to their start-up behaviour and with no calls recorded."""
    for url in stack.providers.values():
        configure(url)
        httpx.post(url + "/_fake/reset", timeout=5).raise_for_status()
    return stack.providers
