"""parley-usage-api as a real process: the caller's usage and the admin views, from the rollups, equal
to the ledger; problem+json errors."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest
from parley_common.db.engine import create_async_db_engine
from parley_common.events import TokensConsumedV1
from parley_common.testing.net import free_port
from parley_common.testing.processes import ProcessManager, venv_command
from parley_usage.ledger import record_batch

from tests.support.platform import PlatformConfig
from tests.usage.support import internal_token, rows, usage_event


def write(database_url: str, events: list[TokensConsumedV1]) -> None:
    async def go() -> None:
        engine = create_async_db_engine(database_url, application_name="tests.api", pool_size=1)
        try:
            await record_batch(engine, events)
        finally:
            await engine.dispose()

    asyncio.run(go())


@pytest.fixture(scope="module")
def api_url(platform_config: PlatformConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    manager = ProcessManager(tmp_path_factory.mktemp("usage-api"))
    try:
        manager.spawn(
            "usage-api",
            [venv_command("parley-usage-api")],
            {**platform_config.base_env(), "PARLEY_HTTP_PORT": str(port)},
            ready_url=f"http://127.0.0.1:{port}/readyz",
            timeout=120,
        )
        yield f"http://127.0.0.1:{port}"
    finally:
        manager.stop_all()


@pytest.fixture
def client(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, timeout=10) as client:
        yield client


def bearer(signing_key_pem: str, user: uuid.UUID, role: str = "user") -> dict[str, str]:
    return {"authorization": f"Bearer {internal_token(signing_key_pem, user, role)}"}


DAY1 = datetime(2026, 2, 10, 9, tzinfo=UTC)
DAY2 = datetime(2026, 2, 11, 23, 59, 59, 999000, tzinfo=UTC)


@pytest.fixture
def usage(ledger_partitions: str) -> tuple[uuid.UUID, list[TokensConsumedV1]]:
    user, other = uuid.uuid4(), uuid.uuid4()
    events = [
        usage_event(user, 1, prompt=100, completion=20, at=DAY1, model="gpt-4o"),
        usage_event(
            user, 2, prompt=50, completion=10, at=DAY1, model="gpt-4o-mini", cached=True, provider="cache"
        ),
        usage_event(user, 3, prompt=30, completion=30, at=DAY2, model="gpt-4o-mini", estimated=True),
        usage_event(user, 4, prompt=1, completion=2, at=DAY2, model="gpt-4o"),
    ]
    write(ledger_partitions, [*events, usage_event(other, 5, at=DAY1)])
    return user, events


class TestMyUsage:
    def test_per_day_and_per_model_equal_the_ledger(
        self,
        client: httpx.Client,
        signing_key_pem: str,
        usage: tuple[uuid.UUID, list[TokensConsumedV1]],
        ledger_partitions: str,
    ) -> None:
        user, _ = usage
        params = {"from": "2026-02-01", "to": "2026-02-28"}
        by_day = client.get(
            "/v1/usage", params={**params, "group_by": "day"}, headers=bearer(signing_key_pem, user)
        )
        assert by_day.status_code == 200, by_day.text
        body = by_day.json()
        assert (body["object"], body["user_id"], body["from"], body["to"]) == (
            "usage",
            str(user),
            "2026-02-01",
            "2026-02-28",
        )
        assert [
            (g["day"], g["prompt_tokens"], g["completion_tokens"], g["requests"]) for g in body["data"]
        ] == [
            ("2026-02-10", 150, 30, 2),
            ("2026-02-11", 31, 32, 2),
        ]
        first = body["data"][0]
        assert (first["cached_requests"], first["cached_share"], first["cached_tokens"]) == (1, 0.5, 60)
        assert (body["data"][1]["estimated_share"], body["data"][1]["estimated_tokens"]) == (0.5, 60)

        ledger = rows(
            ledger_partitions,
            "SELECT model, sum(prompt_tokens) AS p, sum(completion_tokens) AS c, count(*) AS n FROM usage.ledger "
            "WHERE user_id = :u GROUP BY model ORDER BY model",
            u=user,
        )
        by_model = client.get(
            "/v1/usage", params={**params, "group_by": "model"}, headers=bearer(signing_key_pem, user)
        )
        assert [
            (g["model"], g["prompt_tokens"], g["completion_tokens"], g["requests"])
            for g in by_model.json()["data"]
        ] == [(r.model, r.p, r.c, r.n) for r in ledger]
        total = by_model.json()["total"]
        assert total["total_tokens"] == sum(r.p + r.c for r in ledger) == 243
        assert total == body["total"]

    def test_a_range_outside_the_usage_is_empty_and_the_default_range_is_this_month(
        self, client: httpx.Client, signing_key_pem: str, usage: tuple[uuid.UUID, list[TokensConsumedV1]]
    ) -> None:
        user, _ = usage
        empty = client.get(
            "/v1/usage",
            params={"from": "2026-03-01", "to": "2026-03-05"},
            headers=bearer(signing_key_pem, user),
        )
        assert empty.json()["data"] == []
        assert empty.json()["total"]["requests"] == 0
        default = client.get("/v1/usage", headers=bearer(signing_key_pem, user)).json()
        today = datetime.now(UTC).date()
        assert (default["from"], default["to"]) == (today.replace(day=1).isoformat(), today.isoformat())

    @pytest.mark.parametrize(
        ("params", "code"),
        [
            ({"from": "2026-02-10", "to": "2026-02-01"}, "invalid_range"),
            ({"from": "2025-01-01", "to": "2026-02-01"}, "range_too_long"),
            ({"group_by": "week"}, "validation_error"),
            ({"from": "yesterday"}, "validation_error"),
        ],
    )
    def test_bad_parameters_are_a_problem(
        self, client: httpx.Client, signing_key_pem: str, params: dict[str, str], code: str
    ) -> None:
        response = client.get("/v1/usage", params=params, headers=bearer(signing_key_pem, uuid.uuid4()))
        assert response.status_code == 422
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["type"].endswith("/" + code)

    def test_without_the_gateway_token_it_is_401(self, client: httpx.Client) -> None:
        assert client.get("/v1/usage").status_code == 401
        forged = client.get("/v1/usage", headers={"authorization": "Bearer not-a-token"})
        assert forged.status_code == 401
        assert forged.json()["type"].endswith("/invalid_token")


class TestAdminView:
    def test_an_admin_sees_any_users_usage(
        self, client: httpx.Client, signing_key_pem: str, usage: tuple[uuid.UUID, list[TokensConsumedV1]]
    ) -> None:
        user, _ = usage
        response = client.get(
            "/v1/admin/usage",
            params={"user_id": str(user), "from": "2026-02-01", "to": "2026-02-28", "group_by": "model"},
            headers=bearer(signing_key_pem, uuid.uuid4(), "admin"),
        )
        assert response.status_code == 200, response.text
        assert response.json()["user_id"] == str(user)
        assert response.json()["total"]["total_tokens"] == 243

    def test_a_user_may_not_use_it_and_an_unknown_user_is_404(
        self, client: httpx.Client, signing_key_pem: str, usage: tuple[uuid.UUID, list[TokensConsumedV1]]
    ) -> None:
        user, _ = usage
        as_user = client.get(
            "/v1/admin/usage", params={"user_id": str(user)}, headers=bearer(signing_key_pem, user)
        )
        assert as_user.status_code == 403
        assert as_user.json()["type"].endswith("/forbidden")
        unknown = client.get(
            "/v1/admin/usage",
            params={"user_id": str(uuid.uuid4())},
            headers=bearer(signing_key_pem, uuid.uuid4(), "admin"),
        )
        assert unknown.status_code == 404
        assert unknown.json()["type"].endswith("/user_not_found")
        bad = client.get(
            "/v1/admin/usage",
            params={"user_id": "nope"},
            headers=bearer(signing_key_pem, uuid.uuid4(), "admin"),
        )
        assert bad.status_code == 422

    def test_drift_is_for_admins(self, client: httpx.Client, signing_key_pem: str) -> None:
        assert (
            client.get("/v1/admin/usage/drift", headers=bearer(signing_key_pem, uuid.uuid4())).status_code
            == 403
        )
        today = datetime.now(UTC).date()
        response = client.get(
            "/v1/admin/usage/drift",
            params={"from": (today - timedelta(days=3)).isoformat()},
            headers=bearer(signing_key_pem, uuid.uuid4(), "admin"),
        )
        assert response.status_code == 200
        assert response.json()["object"] == "usage.drift"
        assert date.fromisoformat(response.json()["to"]) == today
