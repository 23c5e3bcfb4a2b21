"""A missing service fails the run with a message naming it (never a green, all-skipped run)."""

from __future__ import annotations

import pytest
from parley_common.testing.net import free_port
from parley_common.testing.services import ServicesMissing, discover


def test_an_unreachable_service_is_named_in_the_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    monkeypatch.setenv("PARLEY_TEST_REDIS_URL", dead)
    with pytest.raises(ServicesMissing) as excinfo:
        discover()
    assert f"PARLEY_TEST_REDIS_URL={dead}" in str(excinfo.value)
    assert "make services-up" in str(excinfo.value)
    assert "PARLEY_TEST_DATABASE_URL" not in str(excinfo.value)  # the reachable ones are not blamed


def test_reachable_services_are_returned() -> None:
    services = discover()
    assert services.database_url.startswith("postgresql")
    assert services.containers == []  # local services answered; no containers were needed
