"""Plans: the defaults, the admin API (admins only), per-user overrides, ``GET /v1/me``, changes that
apply to the next request on every replica, and ``plan.changed.v1`` applied by the gateway's worker."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import httpx
import openai
import pytest
from parley_common.events import PlanChangedV1
from parley_common.messaging.celery_protocol import event_message
from parley_common.testing import rabbitmq
from parley_common.testing.processes import ProcessManager, venv_command

from tests.gateway.support import CHAT_BODY, Account, Stack, run_admin_cli, start_stack, wait_until
from tests.support.db import query
from tests.support.platform import PlatformConfig


@pytest.fixture(scope="module")
def stack(manager: ProcessManager, platform_config: PlatformConfig) -> Stack:
    return start_stack(manager, platform_config, gateways=2)


@pytest.fixture(scope="module")
def admin(stack: Stack) -> Account:
    return stack.admin()


def me(url: str, account: Account) -> dict[str, Any]:
    response = httpx.get(url + "/v1/me", headers=account.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def plan_name() -> str:
    return f"p-{uuid.uuid4().hex[:8]}"


def create_plan(stack: Stack, admin: Account, **fields: Any) -> dict[str, Any]:
    name = fields.pop("name", None) or plan_name()
    response = httpx.post(stack.url + "/v1/admin/plans", json={"name": name, **fields}, headers=admin.headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


class TestAdminOnly:
    ROUTES: ClassVar[list[tuple[str, str, dict[str, Any] | None]]] = [
        ("GET", "/v1/admin/plans", None),
        ("POST", "/v1/admin/plans", {"name": "sneaky"}),
        ("GET", "/v1/admin/plans/free", None),
        ("PATCH", "/v1/admin/plans/free", {"requests_per_minute": 100000}),
        ("DELETE", "/v1/admin/plans/pro", None),
        ("GET", "/v1/admin/users?email=a@example.com", None),
        ("PATCH", "/v1/admin/users/{me}", {"role": "admin"}),
        ("GET", "/v1/admin/usage/users/{me}", None),
    ]

    def test_a_user_token_or_api_key_cannot_reach_admin_routes(self, stack: Stack) -> None:
        user = stack.register()
        key = httpx.post(stack.url + "/v1/api-keys", json={"name": "k"}, headers=user.headers).json()["key"]
        for credential in (user.access, key):
            for method, path, body in self.ROUTES:
                response = httpx.request(
                    method,
                    stack.url + path.format(me=user.id),
                    json=body,
                    headers={"authorization": f"Bearer {credential}"},
                )
                assert response.status_code == 403, (method, path, response.text)
        assert me(stack.url, user)["role"] == "user"
        free = httpx.get(stack.url + "/v1/me", headers=user.headers).json()["plan"]
        assert free["requests_per_minute"] == 60

    def test_promotion_and_demotion_apply_immediately(self, stack: Stack) -> None:
        person = stack.register()
        assert httpx.get(stack.url + "/v1/admin/plans", headers=person.headers).status_code == 403
        run_admin_cli(stack.env, "promote", person.email)
        assert httpx.get(stack.urls[1] + "/v1/admin/plans", headers=person.headers).status_code == 200
        run_admin_cli(stack.env, "demote", person.email)
        assert httpx.get(stack.urls[0] + "/v1/admin/plans", headers=person.headers).status_code == 403


class TestPlans:
    def test_the_default_plans(self, stack: Stack, admin: Account) -> None:
        plans = {p["name"]: p for p in httpx.get(stack.url + "/v1/admin/plans", headers=admin.headers).json()}
        assert {"free", "pro", "enterprise"} <= set(plans)
        free = plans["free"]
        assert free["model_routes"] == {"gpt-4o": "gpt-4o-mini"}
        assert free["default_model"] == "gpt-4o-mini"
        assert free["daily_token_quota"] < plans["pro"]["daily_token_quota"]
        assert plans["enterprise"]["daily_token_quota"] is None
        limits = {name: (p["rag_max_documents"], p["rag_max_document_bytes"]) for name, p in plans.items()}
        assert limits["free"] == (10, 100_000)
        assert limits["pro"] == (100, 500_000)
        assert limits["enterprise"] == (1_000, 1_000_000)
        for plan in plans.values():
            assert plan["cache"] in ("off", "exact", "semantic")
            for key in ("requests_per_minute", "tokens_per_minute", "concurrent_streams", "allowed_models"):
                assert key in plan

    def test_the_plan_reaches_chat_free_is_routed_to_the_cheaper_model(
        self, stack: Stack, admin: Account
    ) -> None:
        user = stack.register()
        client = openai.OpenAI(base_url=stack.url + "/v1", api_key=user.access, max_retries=0)
        asked_big = client.chat.completions.create(model="gpt-4o", messages=CHAT_BODY["messages"])  # type: ignore[arg-type]
        assert asked_big.model == "gpt-4o-mini"
        stack.set_user(admin, user.id, plan="pro")
        upgraded = client.chat.completions.create(model="gpt-4o", messages=CHAT_BODY["messages"])  # type: ignore[arg-type]
        assert upgraded.model == "gpt-4o"
        narrow = create_plan(stack, admin, allowed_models=["gpt-4o-mini"], default_model="gpt-4o-mini")
        stack.set_user(admin, user.id, plan=narrow["name"])
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="gpt-4o", messages=CHAT_BODY["messages"])  # type: ignore[arg-type]

    def test_a_plan_change_applies_to_the_next_request_on_every_replica(
        self, stack: Stack, admin: Account
    ) -> None:
        tiny = create_plan(stack, admin, requests_per_minute=2)
        user = stack.register()
        for url in stack.urls:  # both replicas cache the user on the free plan
            assert me(url, user)["plan"]["name"] == "free"
        stack.set_user(admin, user.id, plan=tiny["name"])  # through replica 0
        assert me(stack.urls[1], user)["plan"]["name"] == tiny["name"]
        codes = [httpx.get(stack.urls[1] + "/v1/models", headers=user.headers).status_code for _ in range(3)]
        assert codes[2] == 429
        # The plan itself changes (replica 0); replica 1 applies the new figure to the very next request.
        changed = httpx.patch(
            stack.urls[0] + f"/v1/admin/plans/{tiny['name']}",
            json={"requests_per_minute": 5},
            headers=admin.headers,
        )
        assert changed.status_code == 200
        assert changed.json()["revision"] > tiny["revision"]
        assert httpx.get(stack.urls[1] + "/v1/models", headers=user.headers).status_code != 429
        assert me(stack.urls[1], user)["limits"]["requests_per_minute"]["limit"] == 5

    def test_per_user_overrides(self, stack: Stack, admin: Account) -> None:
        user = stack.register()
        changed = stack.set_user(
            admin, user.id, plan_overrides={"concurrent_streams": 9, "daily_token_quota": None}
        )
        assert changed["plan_overrides"] == {"concurrent_streams": 9, "daily_token_quota": None}
        assert changed["effective_plan"]["concurrent_streams"] == 9
        view = me(stack.urls[1], user)
        assert view["plan"]["name"] == "free"
        assert view["limits"]["concurrent_streams"]["limit"] == 9
        assert view["limits"]["daily_tokens"]["limit"] is None  # unlimited for this user
        assert view["limits"]["monthly_tokens"]["limit"] == 2_000_000
        stack.set_user(admin, user.id, plan_overrides={})
        assert me(stack.urls[1], user)["limits"]["concurrent_streams"]["limit"] == 3

    def test_rag_limits_are_shown_settable_and_validated(self, stack: Stack, admin: Account) -> None:
        base, h = stack.url + "/v1/admin/plans", admin.headers
        plain = create_plan(stack, admin)
        assert (plain["rag_max_documents"], plain["rag_max_document_bytes"]) == (10, 100_000)  # free's
        unlimited = create_plan(stack, admin, rag_max_documents=None, rag_max_document_bytes=2_000_000)
        assert (unlimited["rag_max_documents"], unlimited["rag_max_document_bytes"]) == (None, 2_000_000)

        changed = httpx.patch(
            f"{base}/{plain['name']}", json={"rag_max_documents": 0, "rag_max_document_bytes": 1}, headers=h
        )
        assert changed.status_code == 200, changed.text
        assert (changed.json()["rag_max_documents"], changed.json()["rag_max_document_bytes"]) == (0, 1)
        assert changed.json()["revision"] > plain["revision"]
        shown = httpx.get(f"{base}/{plain['name']}", headers=h).json()
        assert (shown["rag_max_documents"], shown["rag_max_document_bytes"]) == (0, 1)
        listed = {p["name"]: p for p in httpx.get(base, headers=h).json()}
        assert listed[unlimited["name"]]["rag_max_documents"] is None

        for bad in (
            {"rag_max_documents": -1},
            {"rag_max_documents": 1_000_001},
            {"rag_max_documents": "many"},
            {"rag_max_document_bytes": 0},
            {"rag_max_document_bytes": -5},
            {"rag_max_document_bytes": 10_000_001},
            {"rag_max_document_bytes": None},  # the largest document always has a size
        ):
            refused = httpx.patch(f"{base}/{plain['name']}", json=bad, headers=h)
            assert refused.status_code == 422, (bad, refused.text)
            assert refused.headers["content-type"] == "application/problem+json", bad
            problem = refused.json()
            assert problem["status"] == 422
            assert next(iter(bad)) in problem["detail"], (bad, problem)
        created = httpx.post(base, json={"name": plan_name(), "rag_max_documents": -1}, headers=h)
        assert created.status_code == 422
        assert created.headers["content-type"] == "application/problem+json"
        after = httpx.get(f"{base}/{plain['name']}", headers=h).json()
        assert (after["rag_max_documents"], after["rag_max_document_bytes"], after["revision"]) == (
            0,
            1,
            changed.json()["revision"],
        )

    def test_per_user_rag_overrides(self, stack: Stack, admin: Account) -> None:
        user = stack.register()
        overrides = {"rag_max_documents": None, "rag_max_document_bytes": 250_000}
        changed = stack.set_user(admin, user.id, plan_overrides=overrides)
        assert changed["plan_overrides"] == overrides
        effective = changed["effective_plan"]
        assert (effective["rag_max_documents"], effective["rag_max_document_bytes"]) == (None, 250_000)
        plan = me(stack.urls[1], user)["plan"]
        assert (plan["name"], plan["rag_max_documents"], plan["rag_max_document_bytes"]) == (
            "free",
            None,
            250_000,
        )
        # Retrieval taken out of this user's plan; the document size back to the plan's.
        stack.set_user(admin, user.id, plan_overrides={"rag_max_documents": 0})
        plan = me(stack.urls[1], user)["plan"]
        assert (plan["rag_max_documents"], plan["rag_max_document_bytes"]) == (0, 100_000)

        url = f"{stack.url}/v1/admin/users/{user.id}"
        for bad in (
            {"rag_max_documents": -1},
            {"rag_max_document_bytes": 0},
            {"rag_max_document_bytes": 10_000_001},
            {"rag_max_document_bytes": None},
        ):
            refused = httpx.patch(url, json={"plan_overrides": bad}, headers=admin.headers)
            assert refused.status_code == 422, (bad, refused.text)
            assert refused.headers["content-type"] == "application/problem+json", bad
            assert next(iter(bad)) in refused.text, bad
        kept = httpx.get(url, headers=admin.headers).json()
        assert kept["plan_overrides"] == {"rag_max_documents": 0}

    def test_admin_changes_of_plan_write_plan_changed(
        self, stack: Stack, admin: Account, database_url: str
    ) -> None:
        user = stack.register()
        stack.set_user(admin, user.id, plan="pro")
        rows = query(
            database_url,
            "SELECT payload FROM gateway.outbox WHERE event_type = 'plan.changed.v1' AND payload->>'user_id' = :u",
            u=user.id,
        )
        assert [
            (r["payload"]["plan"], r["payload"]["previous_plan"], r["payload"]["reason"]) for r in rows
        ] == [("pro", "free", "admin")]

    def test_bad_changes_are_refused_clearly(self, stack: Stack, admin: Account) -> None:
        base = stack.url + "/v1/admin"
        h = admin.headers
        assert httpx.patch(base + "/plans/free", json={"cache": "bogus"}, headers=h).status_code == 422
        assert (
            httpx.patch(base + "/plans/free", json={"requests_per_minute": 0}, headers=h).status_code == 422
        )
        assert httpx.patch(base + "/plans/free", json={"colour": "red"}, headers=h).status_code == 422
        assert httpx.post(base + "/plans", json={"name": "free"}, headers=h).status_code == 409
        assert httpx.post(base + "/plans", json={"name": "Bad Name!"}, headers=h).status_code == 422
        assert httpx.get(base + "/plans/nope", headers=h).status_code == 404
        assert httpx.delete(base + "/plans/free", headers=h).status_code == 409
        in_use = create_plan(stack, admin)
        user = stack.register()
        stack.set_user(admin, user.id, plan=in_use["name"])
        assert httpx.delete(base + f"/plans/{in_use['name']}", headers=h).status_code == 409
        unused = create_plan(stack, admin)
        assert httpx.delete(base + f"/plans/{unused['name']}", headers=h).status_code == 204
        assert httpx.patch(base + f"/users/{user.id}", json={"plan": "nope"}, headers=h).status_code == 404
        assert httpx.get(base + f"/users/{uuid.uuid4()}", headers=h).status_code == 404
        assert httpx.patch(base + f"/users/{user.id}", json={"role": "root"}, headers=h).status_code == 422


class TestMe:
    def test_every_limit_has_its_size_what_is_left_and_when_it_resets(self, stack: Stack) -> None:
        user = stack.register()
        called = httpx.post(stack.url + "/v1/chat/completions", json=CHAT_BODY, headers=user.headers)
        assert called.status_code == 200, called.text
        view = me(stack.url, user)
        assert view["email"] == user.email
        assert view["plan"]["name"] == "free"
        limits = view["limits"]
        assert set(limits) == {
            "requests_per_minute",
            "tokens_per_minute",
            "concurrent_streams",
            "daily_tokens",
            "monthly_tokens",
        }
        for limit in limits.values():
            assert {"limit", "remaining", "reset"} <= set(limit)
        assert limits["requests_per_minute"]["remaining"] == 59
        assert 0 < limits["requests_per_minute"]["reset_seconds"] <= 60
        assert limits["daily_tokens"]["remaining"] == 200_000 - limits["daily_tokens"]["used"]
        reset = datetime.fromisoformat(limits["daily_tokens"]["reset"])
        assert reset.hour == reset.minute == 0
        assert timedelta(0) < reset - datetime.now(UTC) <= timedelta(days=1)
        assert limits["concurrent_streams"]["remaining"] == 3
        assert view["quota_counters_trusted"] is True


async def publish(url: str, *events: PlanChangedV1) -> None:
    # One at a time, in order: the test is about events arriving in a given order.
    for event in events:
        await rabbitmq.publish_async(url, [event_message(event)])


class TestPlanChangedWorker:
    def test_billing_plan_changes_apply_once_in_order_on_every_replica(
        self, manager: ProcessManager, stack: Stack, fresh_amqp_url: str, database_url: str
    ) -> None:
        worker = manager.spawn(
            "gateway-worker",
            [venv_command("parley-gateway-worker")],
            {**stack.env, "PARLEY_RABBITMQ_URL": fresh_amqp_url},
        )
        try:
            worker.wait_for_log(r"ready\.$", timeout=60)
            user = stack.register()
            for url in stack.urls:
                assert me(url, user)["plan"]["name"] == "free"
            now = datetime.now(UTC)
            upgrade = PlanChangedV1(
                source="webhooks", user_id=uuid.UUID(user.id), plan="pro", previous_plan="free", time=now
            )
            asyncio.run(publish(fresh_amqp_url, upgrade))
            wait_until(lambda: me(stack.urls[1], user)["plan"]["name"] == "pro", what="plan applied")
            assert me(stack.urls[0], user)["plan"]["name"] == "pro"
            revision = query(database_url, "SELECT revision FROM gateway.users WHERE id = :u", u=user.id)
            # Redelivered, and an older change arriving late: neither does anything.
            stale = PlanChangedV1(
                source="webhooks", user_id=uuid.UUID(user.id), plan="free", time=now - timedelta(minutes=5)
            )
            asyncio.run(publish(fresh_amqp_url, upgrade, stale))
            wait_until(
                lambda: (
                    len(
                        query(
                            database_url,
                            "SELECT 1 FROM gateway.applied_events WHERE event_id IN (:a, :b)",
                            a=str(upgrade.id),
                            b=str(stale.id),
                        )
                    )
                    == 2
                ),
                what="both events handled",
            )
            worker.wait_for_log(lambda r: r.get("event") == "plan_change.duplicate")
            assert me(stack.urls[1], user)["plan"]["name"] == "pro"
            assert (
                query(database_url, "SELECT revision FROM gateway.users WHERE id = :u", u=user.id) == revision
            )
            # An unknown plan is a configuration error: dead-lettered, nothing changed.
            bogus = PlanChangedV1(source="webhooks", user_id=uuid.UUID(user.id), plan="platinum")
            asyncio.run(publish(fresh_amqp_url, bogus))
            worker.wait_for_log(lambda r: r.get("event") == "event.failed")
            assert me(stack.urls[1], user)["plan"]["name"] == "pro"
        finally:
            worker.stop()
