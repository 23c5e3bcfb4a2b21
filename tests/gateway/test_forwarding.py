"""Forwarding: what the services behind the gateway receive, and what clients get back.

A recording server stands in for chat, usage and webhooks here, so every header and byte the gateway
forwards can be checked (chat's own contract tests use the real chat).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from parley_common.auth.internal import InternalIdentity, InternalTokenVerifier
from parley_common.auth.jwks import KeySet
from parley_common.testing.net import free_port
from parley_common.testing.processes import ProcessManager

from tests.gateway.support import CHAT_BODY, Account, Stack, start_stack, wait_until
from tests.support.platform import PlatformConfig


@pytest.fixture(scope="module")
def stack(manager: ProcessManager, platform_config: PlatformConfig, echo_url: str) -> Stack:
    return start_stack(
        manager,
        platform_config,
        with_chat=False,
        PARLEY_CHAT_URL=echo_url,
        PARLEY_USAGE_URL=echo_url,
        PARLEY_WEBHOOKS_URL=echo_url,
        PARLEY_MAX_BODY_BYTES=str(64 * 1024),
        PARLEY_MAX_JSON_DEPTH="8",
        PARLEY_UPSTREAM_TIMEOUT="1.5",
    )


@pytest.fixture
def user(stack: Stack, echo_url: str) -> Account:
    httpx.post(echo_url + "/_echo/reset")
    return stack.register()


def recorded(echo_url: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = httpx.get(echo_url + "/_echo/requests").json()
    return data


def verify_internal(stack: Stack, token: str) -> InternalIdentity:
    jwks = httpx.get(stack.url + "/.well-known/jwks.json").json()
    return asyncio.run(InternalTokenVerifier(KeySet(document=jwks)).verify(token))


def me(stack: Stack, account: Account) -> dict[str, Any]:
    response = httpx.get(stack.url + "/v1/me", headers=account.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def sse_data(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]


class TestModelCalls:
    def test_chat_gets_an_internal_token_with_the_plan_and_the_usage_header(
        self, stack: Stack, user: Account, echo_url: str
    ) -> None:
        raw = json.dumps(CHAT_BODY, indent=1).encode()
        response = httpx.post(
            stack.url + "/v1/chat/completions",
            content=raw,
            headers={
                **user.headers,
                "content-type": "application/json",
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            },
        )
        assert response.status_code == 200, response.text
        [seen] = recorded(echo_url)
        assert seen["headers"]["x-parley-usage"] == "1"
        assert seen["headers"]["x-request-id"] == response.headers["x-request-id"]
        assert seen["headers"]["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"
        assert seen["body"].encode() == raw  # the body passes through byte for byte
        internal = seen["headers"]["authorization"].removeprefix("Bearer ")
        assert internal != user.access
        identity = verify_internal(stack, internal)
        assert str(identity.user_id) == user.id
        assert identity.role == "user"
        assert identity.plan.name == "free"
        assert identity.plan.model_routes == {"gpt-4o": "gpt-4o-mini"}
        assert "gpt-4o-mini" in identity.plan.allowed_models
        assert identity.plan.default_model == "gpt-4o-mini"
        assert identity.plan.cache == "exact"
        assert (identity.plan.daily_token_quota, identity.plan.monthly_token_quota) == (200_000, 2_000_000)
        assert (identity.plan.rag_max_documents, identity.plan.rag_max_document_bytes) == (10, 100_000)

    def test_the_plan_claims_carry_the_rag_limits_with_overrides_and_plan_changes(
        self, stack: Stack, user: Account, echo_url: str
    ) -> None:
        admin = stack.admin()

        def forwarded_limits() -> tuple[Any, Any]:
            """The RAG limits in the plan claims of the token the next forwarded request carries."""
            httpx.post(echo_url + "/_echo/reset")
            assert httpx.get(stack.url + "/v1/models", headers=user.headers).status_code == 200
            [seen] = recorded(echo_url)
            token = seen["headers"]["authorization"].removeprefix("Bearer ")
            plan = verify_internal(stack, token).plan
            # Sent, not filled in by PlanClaims's defaults on the way in (those are the free plan's).
            sent = jwt.decode(token, options={"verify_signature": False})["plan"]
            assert (sent["rag_max_documents"], sent["rag_max_document_bytes"]) == (
                plan.rag_max_documents,
                plan.rag_max_document_bytes,
            )
            return plan.rag_max_documents, plan.rag_max_document_bytes

        assert forwarded_limits() == (10, 100_000)
        stack.set_user(admin, user.id, plan="enterprise")
        assert forwarded_limits() == (1_000, 1_000_000)
        stack.set_user(admin, user.id, plan_overrides={"rag_max_documents": None})
        assert forwarded_limits() == (None, 1_000_000)  # unlimited documents: null, not the default 10
        stack.set_user(
            admin, user.id, plan_overrides={"rag_max_documents": 3, "rag_max_document_bytes": 4096}
        )
        assert forwarded_limits() == (3, 4096)

        name = f"rag-{uuid.uuid4().hex[:8]}"
        plans = stack.url + "/v1/admin/plans"
        created = httpx.post(
            plans,
            json={"name": name, "rag_max_documents": 0, "rag_max_document_bytes": 1234},
            headers=admin.headers,
        )
        assert created.status_code == 201, created.text
        stack.set_user(admin, user.id, plan=name, plan_overrides={})
        assert forwarded_limits() == (0, 1234)  # no retrieval in this plan
        changed = httpx.patch(f"{plans}/{name}", json={"rag_max_documents": 7}, headers=admin.headers)
        assert changed.status_code == 200, changed.text
        assert forwarded_limits() == (7, 1234)  # the plan's change applies to the very next request

    def test_non_streamed_usage_is_settled_from_the_reply(self, stack: Stack, user: Account) -> None:
        before = me(stack, user)["limits"]["daily_tokens"]
        assert httpx.post(stack.url + "/v1/chat/completions", json=CHAT_BODY, headers=user.headers).is_success
        after = me(stack, user)["limits"]["daily_tokens"]
        assert after["used"] - before["used"] == 18  # the reply's usage.total_tokens
        assert after["reserved"] == 0
        assert after["remaining"] == after["limit"] - after["used"]

    # None: events as the upstream writes them; a number: the stream in pieces of that many bytes, so
    # events (the usage chunk too) arrive cut across reads anywhere.
    @pytest.mark.parametrize("piece", [None, 1, 7, 64])
    def test_stream_hides_the_usage_chunk_unless_asked_and_settles_from_it(
        self, stack: Stack, user: Account, piece: int | None
    ) -> None:
        body = {**CHAT_BODY, "stream": True, **({"split": piece} if piece else {})}
        plain = httpx.post(stack.url + "/v1/chat/completions", json=body, headers=user.headers)
        chunks = sse_data(plain.text)
        assert plain.text.endswith("data: [DONE]\n\n")
        assert chunks[-1] == "[DONE]"
        assert all("usage" not in json.loads(c) for c in chunks[:-1])
        assert "".join(json.loads(c)["choices"][0]["delta"]["content"] for c in chunks[:-1]) == (
            "hello there friend"
        )
        asked = httpx.post(
            stack.url + "/v1/chat/completions",
            json={**body, "stream_options": {"include_usage": True}},
            headers=user.headers,
        )
        last = json.loads(sse_data(asked.text)[-2])
        assert last["choices"] == []
        assert last["usage"]["total_tokens"] == 18
        assert me(stack, user)["limits"]["daily_tokens"]["used"] == 36  # both settled from the usage

    def test_a_stream_cut_by_the_client_closes_upstream_frees_the_slot_and_settles_an_estimate(
        self, stack: Stack, user: Account, echo_url: str
    ) -> None:
        with httpx.stream(
            "POST",
            stack.url + "/v1/chat/completions",
            json={**CHAT_BODY, "stream": True, "hang": True},
            headers=user.headers,
        ) as response:
            chunks = response.iter_text()  # kept: dropping the iterator would close the connection
            first = next(chunks)
            assert "hello" in first
            during = me(stack, user)["limits"]
            assert during["concurrent_streams"]["remaining"] == during["concurrent_streams"]["limit"] - 1
            assert during["daily_tokens"]["reserved"] > 0
        wait_until(lambda: recorded(echo_url)[-1]["disconnected"], what="upstream saw the disconnect")
        after = wait_until(
            lambda: (limits := me(stack, user)["limits"])["daily_tokens"]["reserved"] == 0 and limits,
            what="reservation released",
        )
        assert after["concurrent_streams"]["remaining"] == after["concurrent_streams"]["limit"]
        # Estimated offline: the prompt plus the one word the client received.
        assert 5 < after["daily_tokens"]["used"] < 30

    def test_a_stream_is_complete_and_settled_at_its_done_event_though_the_service_ends_later(
        self, stack: Stack, user: Account
    ) -> None:
        # The service ends its reply 5 s after [DONE]; the gateway gives up on that end after its read
        # timeout (1.5 s here) and closes the connection, with nothing to tell the client.
        started = time.monotonic()
        response = httpx.post(
            stack.url + "/v1/chat/completions",
            json={**CHAT_BODY, "stream": True, "linger": 5},
            headers=user.headers,
            timeout=10,
        )
        assert response.text.endswith("data: [DONE]\n\n")
        assert time.monotonic() - started < 1.4  # neither the service's end nor the read timeout awaited
        limits = me(stack, user)["limits"]
        assert limits["concurrent_streams"]["remaining"] == limits["concurrent_streams"]["limit"]
        assert limits["daily_tokens"]["reserved"] == 0
        assert limits["daily_tokens"]["used"] == 18  # settled from the stream's usage chunk

    def test_the_openai_sdk_streams_through_the_gateway(self, stack: Stack, user: Account) -> None:
        import openai

        client = openai.OpenAI(base_url=stack.url + "/v1", api_key=user.access, max_retries=0)
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=CHAT_BODY["messages"], stream=True
        )  # type: ignore[arg-type]
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == "hello there friend"


class TestOtherRoutes:
    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("GET", "/v1/conversations?limit=5&cursor=abc"),
            ("POST", "/v1/conversations"),
            ("PATCH", "/v1/conversations/123"),
            ("DELETE", "/v1/conversations/123"),
            ("GET", "/v1/conversations/123/messages?limit=2"),
            ("GET", "/v1/models"),
            ("GET", "/v1/usage?from=2026-01-01&group_by=day"),
            ("POST", "/v1/webhooks/endpoints"),
            ("GET", "/v1/webhooks/deliveries?status=failed"),
        ],
    )
    def test_forwarded_with_method_path_query_and_internal_token(
        self, stack: Stack, user: Account, echo_url: str, method: str, path: str
    ) -> None:
        body = {"title": "x"} if method in ("POST", "PATCH") else None
        response = httpx.request(method, stack.url + path, json=body, headers=user.headers)
        assert response.status_code == 200, response.text
        assert response.json()["echo"] is True
        [seen] = recorded(echo_url)
        assert seen["method"] == method
        assert seen["path"] + ("?" + seen["query"] if seen["query"] else "") == path
        assert "x-parley-usage" not in seen["headers"]
        identity = verify_internal(stack, seen["headers"]["authorization"].removeprefix("Bearer "))
        assert str(identity.user_id) == user.id
        assert response.headers["x-ratelimit-limit-requests"] == "60"

    def test_posting_a_conversation_message_is_a_model_call(
        self, stack: Stack, user: Account, echo_url: str
    ) -> None:
        response = httpx.post(
            stack.url + "/v1/conversations/abc/messages", json={"content": "hello"}, headers=user.headers
        )
        assert response.status_code == 200
        assert recorded(echo_url)[0]["headers"]["x-parley-usage"] == "1"
        assert "x-ratelimit-remaining-tokens" in response.headers

    def test_admin_routes_of_services_need_the_admin_role(
        self, stack: Stack, user: Account, echo_url: str
    ) -> None:
        refused = httpx.get(stack.url + "/v1/admin/usage/users/1", headers=user.headers)
        assert refused.status_code == 403
        assert refused.headers["content-type"] == "application/problem+json"
        assert recorded(echo_url) == []
        admin = stack.admin()
        allowed = httpx.get(stack.url + "/v1/admin/usage/users/1", headers=admin.headers)
        assert allowed.status_code == 200
        identity = verify_internal(stack, recorded(echo_url)[0]["headers"]["authorization"][7:])
        assert identity.role == "admin"

    def test_inbound_billing_webhook_passes_through_unauthenticated_and_untouched(
        self, stack: Stack, echo_url: str
    ) -> None:
        httpx.post(echo_url + "/_echo/reset")
        raw = b'{ "type" : "subscription.updated",\n  "data": {"plan":"pro"} }'
        signature = {
            "webhook-id": "msg_1",
            "webhook-timestamp": "1700000000",
            "webhook-signature": "v1,abc==",
            "stripe-signature": "t=1,v1=def",
        }
        response = httpx.post(
            stack.url + "/v1/webhooks/inbound/billing",
            content=raw,
            headers={**signature, "content-type": "application/json", "authorization": "Bearer whatever"},
        )
        assert response.status_code == 200
        [seen] = recorded(echo_url)
        assert seen["body"].encode() == raw
        for name, value in signature.items():
            assert seen["headers"][name] == value
        assert "authorization" not in seen["headers"]

    def test_unauthenticated_calls_never_reach_a_service(self, stack: Stack, echo_url: str) -> None:
        httpx.post(echo_url + "/_echo/reset")
        for path in ("/v1/conversations", "/v1/usage", "/v1/webhooks/endpoints", "/v1/models"):
            response = httpx.get(stack.url + path, headers={"authorization": "Bearer nope"})
            assert response.status_code == 401
            assert response.headers["www-authenticate"].startswith("Bearer")
        assert recorded(echo_url) == []


class TestRequestChecks:
    def test_a_body_over_the_limit_is_413_declared_or_chunked(self, stack: Stack, user: Account) -> None:
        big = {"model": "m", "messages": [{"role": "user", "content": "x" * 70_000}]}
        declared = httpx.post(stack.url + "/v1/chat/completions", json=big, headers=user.headers)
        assert declared.status_code == 413
        assert declared.json()["error"]["code"] == "request_too_large"  # OpenAI's shape on OpenAI routes

        def chunks() -> Any:
            for _ in range(70):
                yield b"x" * 1024

        chunked = httpx.post(stack.url + "/v1/conversations", content=chunks(), headers=user.headers)
        assert chunked.status_code == 413
        assert chunked.headers["content-type"] == "application/problem+json"

    def test_json_nested_too_deep_or_broken_is_400(self, stack: Stack, user: Account, echo_url: str) -> None:
        deep: Any = "x"
        for _ in range(20):
            deep = [deep]
        too_deep = httpx.post(
            stack.url + "/v1/chat/completions", json={**CHAT_BODY, "metadata": deep}, headers=user.headers
        )
        assert too_deep.status_code == 400
        assert "deeper" in too_deep.json()["error"]["message"]
        broken = httpx.post(
            stack.url + "/v1/conversations",
            content=b'{"title": ',
            headers={**user.headers, "content-type": "application/json"},
        )
        assert broken.status_code == 400
        assert broken.json()["status"] == 400
        not_object = httpx.post(stack.url + "/v1/chat/completions", json=[1, 2], headers=user.headers)
        assert not_object.status_code == 400
        assert recorded(echo_url) == []
        # Many brackets but shallow (and brackets inside strings): depth, not bracket count, decides.
        wide = httpx.post(
            stack.url + "/v1/chat/completions",
            json={**CHAT_BODY, "metadata": {"lists": [[i] for i in range(100)], "text": "[[[[{{{{" * 10}},
            headers=user.headers,
        )
        assert wide.status_code == 200, wide.text

    def test_a_slow_service_is_504_and_the_reservation_is_refunded(self, stack: Stack, user: Account) -> None:
        response = httpx.post(
            stack.url + "/v1/chat/completions",
            json={**CHAT_BODY, "sleep": 3},
            headers=user.headers,
            timeout=10,
        )
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "upstream_timeout"
        limits = me(stack, user)["limits"]["daily_tokens"]
        assert (limits["used"], limits["reserved"]) == (0, 0)

    def test_a_service_that_is_down_is_502_and_the_reservation_is_refunded(
        self, stack: Stack, user: Account
    ) -> None:
        _, url = stack.start_gateway(
            "gateway-dead-upstream", PARLEY_CHAT_URL=f"http://127.0.0.1:{free_port()}"
        )
        response = httpx.post(url + "/v1/chat/completions", json=CHAT_BODY, headers=user.headers)
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "upstream_unavailable"
        limits = me(stack, user)["limits"]["daily_tokens"]
        assert (limits["used"], limits["reserved"]) == (0, 0)


class TestServedOutsideFastAPI:
    """The forwarded routes skip FastAPI's layers (hot_path.py); clients and operators see no difference."""

    def test_another_method_on_a_forwarded_path_is_405_in_the_paths_shape(
        self, stack: Stack, user: Account, echo_url: str
    ) -> None:
        httpx.post(echo_url + "/_echo/reset")
        openai_route = httpx.put(stack.url + "/v1/chat/completions", json=CHAT_BODY, headers=user.headers)
        assert openai_route.status_code == 405
        assert openai_route.headers["allow"] == "POST"
        assert openai_route.json()["error"]["type"] == "invalid_request_error"
        # POST-only /v1/webhooks/inbound/billing matches the path; /v1/webhooks/{rest} matches it all.
        later_route = httpx.delete(stack.url + "/v1/webhooks/inbound/billing", headers=user.headers)
        assert later_route.status_code == 200
        models = httpx.post(stack.url + "/v1/models", json={}, headers=user.headers)
        assert models.status_code == 405
        assert models.headers["allow"] == "GET, HEAD"
        assert [r["method"] for r in recorded(echo_url)] == ["DELETE"]

    def test_forwarded_requests_are_counted_by_route_and_status(self, stack: Stack, user: Account) -> None:
        def counted(status: int) -> float:
            prefix = (
                'parley_http_requests_total{method="POST",route="/v1/chat/completions",'
                f'service="gateway",status="{status}"}} '
            )
            for line in httpx.get(stack.url + "/metrics").text.splitlines():
                if line.startswith(prefix):
                    return float(line.removeprefix(prefix))
            return 0.0

        ok, refused = counted(200), counted(400)
        assert httpx.post(stack.url + "/v1/chat/completions", json=CHAT_BODY, headers=user.headers).is_success
        assert (
            httpx.post(stack.url + "/v1/chat/completions", json=[1], headers=user.headers).status_code == 400
        )
        assert (counted(200), counted(400)) == (ok + 1, refused + 1)


class TestWebUI:
    def test_web_dir_is_served_at_root_and_api_routes_win(self, stack: Stack, tmp_path: Path) -> None:
        (tmp_path / "index.html").write_text("<h1>Parley</h1>")
        (tmp_path / "app.js").write_text("console.log(1)")
        _, url = stack.start_gateway("gateway-web", PARLEY_WEB_DIR=str(tmp_path))
        assert "<h1>Parley</h1>" in httpx.get(url + "/").text
        assert httpx.get(url + "/app.js").text == "console.log(1)"
        assert httpx.get(url + "/v1/me").status_code == 401
        assert "keys" in httpx.get(url + "/.well-known/jwks.json").json()
        missing = httpx.get(url + "/nope.html")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"

    def test_not_served_in_production(self, stack: Stack, tmp_path: Path) -> None:
        (tmp_path / "index.html").write_text("<h1>Parley</h1>")
        _, url = stack.start_gateway(
            "gateway-prod",
            PARLEY_WEB_DIR=str(tmp_path),
            PARLEY_ENV="prod",
            # Production refuses development defaults; this is the same server, named differently.
            PARLEY_REDIS_URL=stack.config.redis_url.replace("127.0.0.1", "localhost"),
        )
        assert httpx.get(url + "/").status_code == 404
