"""Module-scoped fixtures shared by the webhooks and notify tests: each test module gets its own database
(webhooks and notify schemas), RabbitMQ vhost and processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from parley_common.testing.processes import ProcessManager
from parley_common.testing.services import TestServices

from tests.webhooks.support import Isolated, Receiver, isolated_resources, start_receiver


@pytest.fixture(scope="module")
def isolated(parley_services: TestServices) -> Iterator[Isolated]:
    with isolated_resources(parley_services) as res:
        yield res


@pytest.fixture(scope="module")
def module_processes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, isolated: Isolated
) -> Iterator[ProcessManager]:
    """Processes of one module; set up after (so stopped before) its database and vhost."""
    manager = ProcessManager(tmp_path_factory.mktemp("processes"))
    yield manager
    failed = any(
        getattr(item, "rep_call", None) is not None and item.rep_call.failed
        for item in request.session.items
        if getattr(item, "module", None) is request.module
    )
    if failed:
        for process in manager.processes:
            tail = "\n".join(line[:400] for line in process.tail(12).splitlines())
            print(f"\n--- {process.name} (last lines) ---\n{tail}")  # noqa: T201
    manager.stop_all()


@pytest.fixture(scope="module")
def receiver(module_processes: ProcessManager) -> Receiver:
    """A local webhook receiver (modules that need canaries define their own)."""
    return start_receiver(module_processes)
