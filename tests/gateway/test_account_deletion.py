"""Account deletion (the right to erasure): ``DELETE /v1/me`` with re-authentication, and
``DELETE /v1/admin/users/{id}``. One transaction erases the sessions, API keys and account and writes
``user.deleted.v1`` to the outbox; every credential of the account is refused at the next request, on
every replica."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from parley_common.testing.processes import ProcessManager

from tests.gateway.support import CHAT_BODY, PASSWORD, Account, Stack, start_stack
from tests.support.db import query
from tests.support.platform import PlatformConfig


@pytest.fixture(scope="module")
def stack(manager: ProcessManager, platform_config: PlatformConfig) -> Stack:
    return start_stack(manager, platform_config, gateways=2)


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


def create_key(url: str, account: Account) -> str:
    response = httpx.post(url + "/v1/api-keys", json={"name": "ci"}, headers=account.headers)
    assert response.status_code == 201, response.text
    secret: str = response.json()["key"]
    return secret


def delete_me(url: str, headers: dict[str, str], body: dict[str, Any] | None) -> httpx.Response:
    return httpx.request("DELETE", url + "/v1/me", json=body, headers=headers, timeout=10)


def refresh(url: str, token: str) -> httpx.Response:
    return httpx.post(url + "/v1/auth/refresh", json={"refresh_token": token})


def deletion_events(database_url: str, user_id: str) -> list[dict[str, Any]]:
    return query(
        database_url,
        "SELECT payload FROM gateway.outbox WHERE event_type = 'user.deleted.v1' AND payload->>'user_id' = :u",
        u=user_id,
    )


def warm_up(stack: Stack, account: Account, key: str) -> None:
    """Every replica caches the account and its key (and so must notice the deletion)."""
    for url in stack.urls[:2]:
        assert httpx.get(url + "/v1/me", headers=account.headers).status_code == 200
        assert httpx.get(url + "/v1/me", headers=bearer(key)).status_code == 200
        assert httpx.post(url + "/v1/chat/completions", json=CHAT_BODY, headers=bearer(key)).is_success


def assert_refused_everywhere(stack: Stack, account: Account, key: str, first: str) -> None:
    """``first``: the request that meets the other replica's stale cache (each path checks on its own)."""
    other = stack.urls[1]
    if first == "forwarded, API key":
        response = httpx.post(other + "/v1/chat/completions", json=CHAT_BODY, headers=bearer(key))
    else:  # an account route, user credentials: would reach the database with a missing owner
        response = httpx.post(other + "/v1/api-keys", json={"name": "x"}, headers=account.headers)
    assert response.status_code == 401, response.text
    for url in reversed(stack.urls[:2]):
        for headers in (account.headers, bearer(key)):
            me = httpx.get(url + "/v1/me", headers=headers)
            assert me.status_code == 401, me.text
            assert me.headers["content-type"] == "application/problem+json"
            assert me.headers["www-authenticate"].startswith("Bearer")
            forwarded = httpx.post(url + "/v1/chat/completions", json=CHAT_BODY, headers=headers)
            assert forwarded.status_code == 401, forwarded.text
            assert forwarded.json()["error"]["type"] == "authentication_error"
        assert httpx.get(url + "/v1/api-keys", headers=account.headers).status_code == 401
        assert (
            httpx.post(url + "/v1/api-keys", json={"name": "x"}, headers=account.headers).status_code == 401
        )
        assert refresh(url, account.refresh).status_code == 401


def assert_erased(database_url: str, account: Account) -> None:
    for table in ("users", "api_keys", "refresh_tokens"):
        column = "id" if table == "users" else "user_id"
        rows = query(database_url, f"SELECT 1 FROM gateway.{table} WHERE {column} = :u", u=account.id)
        assert rows == [], table
    [event] = deletion_events(database_url, account.id)
    payload = event["payload"]
    assert (payload["type"], payload["source"]) == ("user.deleted.v1", "gateway")
    assert (payload["user_id"], payload["subject"], payload["email"]) == (
        account.id,
        account.id,
        account.email,
    )


class TestDeleteMe:
    def test_the_password_deletes_the_account_and_every_credential_dies_on_every_replica(
        self, stack: Stack, database_url: str
    ) -> None:
        account = stack.register()
        key = create_key(stack.url, account)
        warm_up(stack, account, key)
        deleted = delete_me(stack.urls[0], account.headers, {"password": PASSWORD})
        assert deleted.status_code == 204, deleted.text
        assert deleted.content == b""
        assert_refused_everywhere(stack, account, key, first="forwarded, API key")
        assert_erased(database_url, account)
        # Once gone, it stays gone (and a second deletion finds no account behind the token).
        assert delete_me(stack.urls[1], account.headers, {"password": PASSWORD}).status_code == 401
        assert len(deletion_events(database_url, account.id)) == 1

    @pytest.mark.parametrize(
        "body",
        [
            {"password": "wrong-password"},
            {"password": ""},
            {},
            None,
            {"confirm_email": "placeholder"},  # a password account confirms with its password
        ],
        ids=["wrong", "empty", "missing", "no-body", "email-instead"],
    )
    def test_without_the_right_password_it_is_403_and_nothing_changes(
        self, stack: Stack, database_url: str, body: dict[str, str] | None
    ) -> None:
        account = stack.register()
        key = create_key(stack.url, account)
        if body and "confirm_email" in body:
            body = {"confirm_email": account.email}
        refused = delete_me(stack.url, account.headers, body)
        assert refused.status_code == 403, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        problem = refused.json()
        assert problem["type"].endswith("/reauthentication_failed")
        assert problem["expected"] == "password"
        for url in stack.urls[:2]:
            assert httpx.get(url + "/v1/me", headers=account.headers).status_code == 200
            assert httpx.get(url + "/v1/me", headers=bearer(key)).status_code == 200
        assert refresh(stack.url, account.refresh).status_code == 200
        assert deletion_events(database_url, account.id) == []

    def test_unknown_fields_are_422(self, stack: Stack) -> None:
        account = stack.register()
        response = delete_me(stack.url, account.headers, {"password": PASSWORD, "force": True})
        assert response.status_code == 422
        assert httpx.get(stack.url + "/v1/me", headers=account.headers).status_code == 200

    def test_an_api_key_cannot_delete_the_account(self, stack: Stack, database_url: str) -> None:
        account = stack.register()
        key = create_key(stack.url, account)
        refused = delete_me(stack.url, bearer(key), {"password": PASSWORD})
        assert refused.status_code == 403
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["type"].endswith("/forbidden")
        assert "API key" in refused.json()["detail"]
        assert httpx.get(stack.url + "/v1/me", headers=bearer(key)).status_code == 200
        assert deletion_events(database_url, account.id) == []

    def test_no_credential_is_401(self, stack: Stack) -> None:
        assert delete_me(stack.url, {}, {"password": PASSWORD}).status_code == 401

    def test_the_email_can_register_again_as_a_fresh_account(self, stack: Stack) -> None:
        old = stack.register()
        create_key(stack.url, old)
        assert delete_me(stack.url, old.headers, {"password": PASSWORD}).status_code == 204
        new = stack.register(email=old.email)
        assert new.id != old.id
        me = httpx.get(stack.urls[1] + "/v1/me", headers=new.headers)
        assert (me.status_code, me.json()["id"]) == (200, new.id)
        assert httpx.get(stack.url + "/v1/api-keys", headers=new.headers).json() == []
        # The old account's token does not open the new one.
        assert httpx.get(stack.url + "/v1/me", headers=old.headers).status_code == 401


@pytest.fixture(scope="module")
def strict_url(stack: Stack) -> str:
    """A third replica that allows 3 attempts per client address a minute (login's limiter)."""
    _, url = stack.start_gateway("gateway-strict", PARLEY_AUTH_IP_PER_MINUTE="3")
    return url


def test_attempts_are_limited_like_login(stack: Stack, strict_url: str, database_url: str) -> None:
    account = stack.register()
    headers = {**account.headers, "x-forwarded-for": f"198.51.100.{uuid.uuid4().int % 250 + 1}"}
    codes = [delete_me(strict_url, headers, {"password": f"guess-number-{i}"}).status_code for i in range(3)]
    assert codes == [403, 403, 403]
    limited = delete_me(strict_url, headers, {"password": PASSWORD})
    assert limited.status_code == 429
    assert limited.json()["type"].endswith("/too_many_attempts")
    assert int(limited.headers["retry-after"]) >= 1
    assert httpx.get(stack.url + "/v1/me", headers=account.headers).status_code == 200
    assert deletion_events(database_url, account.id) == []


class TestAdminDelete:
    def test_an_admin_deletes_any_account_without_its_password(self, stack: Stack, database_url: str) -> None:
        admin = stack.admin()
        account = stack.register()
        key = create_key(stack.url, account)
        warm_up(stack, account, key)
        response = httpx.delete(stack.urls[0] + f"/v1/admin/users/{account.id}", headers=admin.headers)
        assert response.status_code == 204, response.text
        assert_refused_everywhere(stack, account, key, first="account route, access token")
        assert_erased(database_url, account)
        again = httpx.delete(stack.urls[1] + f"/v1/admin/users/{account.id}", headers=admin.headers)
        assert again.status_code == 404
        assert again.json()["type"].endswith("/user_not_found")
        assert httpx.get(stack.url + "/v1/me", headers=admin.headers).status_code == 200

    def test_unknown_ids_are_404(self, stack: Stack) -> None:
        admin = stack.admin()
        response = httpx.delete(stack.url + f"/v1/admin/users/{uuid.uuid4()}", headers=admin.headers)
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"].endswith("/user_not_found")

    def test_only_admins_may(self, stack: Stack, database_url: str) -> None:
        user, victim = stack.register(), stack.register()
        response = httpx.delete(stack.url + f"/v1/admin/users/{victim.id}", headers=user.headers)
        assert response.status_code == 403
        assert response.json()["type"].endswith("/forbidden")
        assert httpx.get(stack.url + "/v1/me", headers=victim.headers).status_code == 200
        assert deletion_events(database_url, victim.id) == []

    def test_a_deleted_admin_loses_admin_access_on_every_replica(self, stack: Stack) -> None:
        admin, other = stack.admin(), stack.admin()
        for url in stack.urls[:2]:  # cached as an admin on both replicas
            assert httpx.get(url + "/v1/admin/plans", headers=admin.headers).status_code == 200
        deleted = httpx.delete(stack.urls[1] + f"/v1/admin/users/{admin.id}", headers=other.headers)
        assert deleted.status_code == 204
        for url in stack.urls[:2]:
            assert httpx.get(url + "/v1/admin/plans", headers=admin.headers).status_code == 401
