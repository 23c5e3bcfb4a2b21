"""API keys: shown once, stored hashed, usable as a bearer credential, owned by one account, and dead on
every replica the moment they are revoked."""

from __future__ import annotations

import hashlib

import httpx
import openai
import pytest
from parley_common.testing.processes import ProcessManager

from tests.gateway.support import CHAT_BODY, Account, Stack, start_stack, wait_until
from tests.support.db import query
from tests.support.platform import PlatformConfig


@pytest.fixture(scope="module")
def stack(manager: ProcessManager, platform_config: PlatformConfig) -> Stack:
    return start_stack(manager, platform_config, gateways=2)


def create_key(stack: Stack, account: Account, name: str = "ci") -> dict[str, str]:
    response = httpx.post(stack.url + "/v1/api-keys", json={"name": name}, headers=account.headers)
    assert response.status_code == 201, response.text
    body: dict[str, str] = response.json()
    return body


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


class TestLifecycle:
    def test_the_secret_is_shown_once_and_stored_only_as_a_digest(
        self, stack: Stack, database_url: str
    ) -> None:
        owner = stack.register()
        created = create_key(stack, owner, "deploy bot")
        secret = created["key"]
        assert secret.startswith("sk-parley-")
        assert created["prefix"] == secret[: len(created["prefix"])]
        listed = httpx.get(stack.url + "/v1/api-keys", headers=owner.headers).json()
        assert [k["id"] for k in listed] == [created["id"]]
        assert "key" not in listed[0]
        one = httpx.get(stack.url + f"/v1/api-keys/{created['id']}", headers=owner.headers).json()
        assert "key" not in one
        assert one["name"] == "deploy bot"
        [row] = query(database_url, "SELECT * FROM gateway.api_keys WHERE id = :id", id=created["id"])
        assert row["key_hash"] == hashlib.sha256(secret.encode()).hexdigest()
        assert secret not in str(row)

    def test_a_key_is_a_bearer_credential_for_the_api_and_the_openai_sdk(
        self, stack: Stack, database_url: str
    ) -> None:
        owner = stack.register()
        created = create_key(stack, owner)
        me = httpx.get(stack.url + "/v1/me", headers=bearer(created["key"])).json()
        assert (me["id"], me["credential"]) == (owner.id, "api_key")
        client = openai.OpenAI(base_url=stack.url + "/v1", api_key=created["key"], max_retries=0)
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=CHAT_BODY["messages"])  # type: ignore[arg-type]
        assert reply.choices[0].message.content
        # The key's id travels in the internal token: chat attributes the usage to it.
        rows = wait_until(
            lambda: query(
                database_url,
                "SELECT payload->>'api_key_id' AS key FROM chat.outbox WHERE payload->>'user_id' = :u",
                u=owner.id,
            ),
            what="usage event",
        )
        assert [r["key"] for r in rows] == [created["id"]]

    def test_a_revoked_key_is_refused_at_once_by_every_replica(self, stack: Stack) -> None:
        owner = stack.register()
        created = create_key(stack, owner)
        for url in stack.urls:  # both replicas have the key cached now
            assert httpx.post(
                url + "/v1/chat/completions", json=CHAT_BODY, headers=bearer(created["key"])
            ).is_success
        revoked = httpx.delete(stack.urls[0] + f"/v1/api-keys/{created['id']}", headers=owner.headers)
        assert revoked.status_code == 204
        for url in reversed(stack.urls):
            response = httpx.post(
                url + "/v1/chat/completions", json=CHAT_BODY, headers=bearer(created["key"])
            )
            assert response.status_code == 401
            assert response.json()["error"]["type"] == "authentication_error"
        assert httpx.get(stack.url + "/v1/api-keys", headers=owner.headers).json() == []

    def test_a_key_cannot_manage_keys(self, stack: Stack) -> None:
        owner = stack.register()
        created = create_key(stack, owner)
        response = httpx.post(
            stack.url + "/v1/api-keys", json={"name": "more"}, headers=bearer(created["key"])
        )
        assert response.status_code == 403

    def test_bad_input_is_422(self, stack: Stack) -> None:
        owner = stack.register()
        for body in ({"name": ""}, {"name": "x" * 101}, {"name": "ok", "expires_in_days": 0}, {}):
            assert httpx.post(stack.url + "/v1/api-keys", json=body, headers=owner.headers).status_code == 422


class TestOwnership:
    def test_another_user_cannot_see_use_or_revoke_a_key(self, stack: Stack) -> None:
        alice, mallory = stack.register(), stack.register()
        key = create_key(stack, alice)
        assert httpx.get(stack.url + "/v1/api-keys", headers=mallory.headers).json() == []
        seen = httpx.get(stack.url + f"/v1/api-keys/{key['id']}", headers=mallory.headers)
        assert seen.status_code == 404
        assert seen.headers["content-type"] == "application/problem+json"
        assert (
            httpx.delete(stack.url + f"/v1/api-keys/{key['id']}", headers=mallory.headers).status_code == 404
        )
        # Still alive and still Alice's.
        me = httpx.get(stack.url + "/v1/me", headers=bearer(key["key"])).json()
        assert me["id"] == alice.id
        # Guessing: a key id, a near-miss secret, the prefix alone.
        for guess in (key["id"], key["key"][:-1] + ("A" if key["key"][-1] != "A" else "B"), key["prefix"]):
            assert httpx.get(stack.url + "/v1/me", headers=bearer(guess)).status_code == 401
