"""Accounts and sessions: registration, login, refresh-token rotation with reuse detection, logout, the
attempt limits on login and registration, and ``user.registered.v1`` through the gateway's outbox."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from parley_common.messaging import topology
from parley_common.testing import rabbitmq
from parley_common.testing.processes import ProcessManager, venv_command

from tests.gateway.support import PASSWORD, Stack, start_stack, wait_until
from tests.support.db import query
from tests.support.platform import PlatformConfig


def new_email() -> str:
    return f"Person-{uuid.uuid4().hex[:10]}@Example.COM"


class TestRegister:
    def test_email_is_normalised_unique_and_the_password_hashed_with_argon2id(
        self, stack: Stack, database_url: str
    ) -> None:
        email = new_email()
        created = httpx.post(stack.url + "/v1/auth/register", json={"email": email, "password": PASSWORD})
        assert created.status_code == 201
        body = created.json()
        assert body["email"] == email.lower()
        assert (body["role"], body["plan"]) == ("user", "free")
        assert "password" not in created.text
        [row] = query(database_url, "SELECT password_hash FROM gateway.users WHERE id = :id", id=body["id"])
        assert row["password_hash"].startswith("$argon2id$")
        again = httpx.post(
            stack.url + "/v1/auth/register", json={"email": email.upper(), "password": PASSWORD + "x"}
        )
        assert again.status_code == 409
        assert again.headers["content-type"] == "application/problem+json"
        assert again.json()["type"].endswith("/email_taken")

    @pytest.mark.parametrize(
        "payload",
        [
            {"email": "not-an-email", "password": PASSWORD},
            {"email": "a@example.com", "password": "short"},
            {"email": "a@example.com", "password": "x" * 300},
            {"email": "a@example.com"},
            {"email": "a@example.com", "password": PASSWORD, "role": "admin"},
        ],
    )
    def test_bad_input_is_a_clear_422(self, stack: Stack, payload: dict[str, str]) -> None:
        response = httpx.post(stack.url + "/v1/auth/register", json=payload)
        assert response.status_code == 422
        assert response.json()["errors"]

    def test_registration_writes_user_registered_in_the_same_transaction(
        self, stack: Stack, database_url: str
    ) -> None:
        account = stack.register()
        rows = query(
            database_url,
            "SELECT event_type, payload FROM gateway.outbox WHERE payload->>'user_id' = :id",
            id=account.id,
        )
        assert [r["event_type"] for r in rows] == ["user.registered.v1"]
        assert rows[0]["payload"]["email"] == account.email
        assert rows[0]["payload"]["source"] == "gateway"


class TestRelay:
    def test_the_relay_publishes_user_registered_to_the_notify_queue(
        self, manager: ProcessManager, stack: Stack, fresh_amqp_url: str, database_url: str
    ) -> None:
        import asyncio

        import aio_pika

        async def declare() -> None:
            connection = await aio_pika.connect(fresh_amqp_url)
            async with connection:
                await topology.declare(await connection.channel())

        asyncio.run(declare())
        account = stack.register()
        relay = manager.spawn(
            "gateway-relay",
            [venv_command("parley-gateway-relay")],
            {**stack.env, "PARLEY_RABBITMQ_URL": fresh_amqp_url},
        )
        try:
            relay.wait_for_log("relay.connected")
            wait_until(
                lambda: query(
                    database_url,
                    "SELECT 1 FROM gateway.outbox WHERE payload->>'user_id' = :id AND published_at IS NOT NULL",
                    id=account.id,
                ),
                what="outbox row published",
            )
            messages = asyncio.run(rabbitmq.drain(fresh_amqp_url, topology.NOTIFY.name))
            bodies = [json.loads(m.body)[1]["event"] for m in messages]
            mine = [b for b in bodies if b.get("user_id") == account.id]
            assert [b["type"] for b in mine] == ["user.registered.v1"]
            assert [m.headers["task"] for m in messages if json.loads(m.body)[1]["event"] in mine] == [
                "user.registered.v1"
            ]
        finally:
            relay.stop()


class TestSessions:
    def login(self, stack: Stack, email: str) -> dict[str, str]:
        response = httpx.post(stack.url + "/v1/auth/login", json={"email": email, "password": PASSWORD})
        assert response.status_code == 200, response.text
        body: dict[str, str] = response.json()
        return body

    def refresh(self, stack: Stack, token: str) -> httpx.Response:
        return httpx.post(stack.url + "/v1/auth/refresh", json={"refresh_token": token})

    def test_login_returns_both_tokens(self, stack: Stack) -> None:
        account = stack.register()
        body = self.login(stack, account.email.upper())
        assert body["token_type"] == "bearer"
        assert body["expires_in"] == 900
        assert body["refresh_token"].startswith("prt_")
        assert httpx.get(
            stack.url + "/v1/me", headers={"authorization": f"Bearer {body['access_token']}"}
        ).is_success

    def test_wrong_password_or_unknown_email_is_the_same_401(self, stack: Stack) -> None:
        account = stack.register()
        wrong = httpx.post(
            stack.url + "/v1/auth/login", json={"email": account.email, "password": "nope-nope-nope"}
        )
        unknown = httpx.post(stack.url + "/v1/auth/login", json={"email": new_email(), "password": PASSWORD})
        assert wrong.status_code == unknown.status_code == 401
        assert wrong.json()["detail"] == unknown.json()["detail"]

    def test_refresh_rotates_and_reusing_an_old_token_revokes_the_family(self, stack: Stack) -> None:
        account = stack.register()
        first = self.refresh(stack, account.refresh)
        assert first.status_code == 200
        second_token = first.json()["refresh_token"]
        assert second_token != account.refresh
        assert httpx.get(
            stack.url + "/v1/me", headers={"authorization": f"Bearer {first.json()['access_token']}"}
        ).is_success
        # The old token comes back (stolen, or replayed): the whole session dies, the new token too.
        reused = self.refresh(stack, account.refresh)
        assert reused.status_code == 401
        assert reused.json()["type"].endswith("/refresh_token_reused")
        assert self.refresh(stack, second_token).status_code == 401
        # Other sessions of the same account are untouched.
        other = self.login(stack, account.email)
        assert self.refresh(stack, other["refresh_token"]).status_code == 200

    def test_logout_revokes_the_session(self, stack: Stack) -> None:
        account = stack.register()
        assert (
            httpx.post(stack.url + "/v1/auth/logout", json={"refresh_token": account.refresh}).status_code
            == 204
        )
        assert self.refresh(stack, account.refresh).status_code == 401
        # Unknown tokens log out quietly (nothing to reveal).
        assert (
            httpx.post(stack.url + "/v1/auth/logout", json={"refresh_token": "prt_nope"}).status_code == 204
        )

    def test_an_access_token_is_not_a_refresh_token_and_garbage_is_401(self, stack: Stack) -> None:
        account = stack.register()
        assert self.refresh(stack, account.access).status_code == 401
        assert self.refresh(stack, "prt_" + "A" * 43).status_code == 401


@pytest.fixture(scope="module")
def strict_stack(manager: ProcessManager, platform_config: PlatformConfig) -> Stack:
    stack = start_stack(manager, platform_config, with_chat=False, gateways=0)
    stack.env.update({"PARLEY_AUTH_IP_PER_MINUTE": "6", "PARLEY_AUTH_EMAIL_PER_MINUTE": "3"})
    stack.start_gateway("gateway-strict")
    stack.start_gateway("gateway-strict-2")
    return stack


class TestAttemptLimits:
    """Client addresses come from X-Forwarded-For, which the gateway trusts from its proxy (loopback)."""

    def test_login_attempts_per_email_are_limited_across_replicas(self, strict_stack: Stack) -> None:
        email = new_email()
        statuses = [
            httpx.post(
                strict_stack.urls[i % 2] + "/v1/auth/login",
                json={"email": email, "password": "wrong-password"},
                headers={"x-forwarded-for": f"203.0.113.{i + 1}"},
            )
            for i in range(5)
        ]
        assert [r.status_code for r in statuses] == [401, 401, 401, 429, 429]
        refused = statuses[-1]
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["type"].endswith("/too_many_attempts")

    def test_attempts_per_ip_are_limited_whatever_the_email(self, strict_stack: Stack) -> None:
        codes = [
            httpx.post(
                strict_stack.urls[i % 2] + "/v1/auth/register",
                json={"email": new_email(), "password": PASSWORD},
                headers={"x-forwarded-for": "203.0.113.200"},
            ).status_code
            for i in range(8)
        ]
        assert codes == [201] * 6 + [429] * 2
        other_address = httpx.post(
            strict_stack.url + "/v1/auth/register",
            json={"email": new_email(), "password": PASSWORD},
            headers={"x-forwarded-for": "203.0.113.201"},
        )
        assert other_address.status_code == 201
