"""Chat's routes reached the way clients reach them: through the gateway, with a real account.

Two pieces belong to the gateway (issue 3): forwarding ``/v1/models`` and ``/v1/conversations`` to chat,
and rate limits. Each test here checks whether the gateway it runs against has that piece and skips,
saying which, when it does not; with the gateway's work merged they run for real.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.chat.support import ChatStack, sse_data
from tests.support.api import register_and_login

MESSAGES = [{"role": "user", "content": "hello through the gateway"}]


def _require_forwarding(stack: ChatStack, token: str, path: str) -> None:
    # Chat never answers 404 to these listings: a 404 means the gateway has no route for them.
    response = httpx.get(stack.gateway_url + path, headers={"authorization": f"Bearer {token}"}, timeout=10)
    if response.status_code == 404:
        pytest.skip(f"the gateway on this branch does not forward {path} to chat yet (issue 3: forwarding)")


class TestThroughTheGateway:
    def test_models_by_plan(self, stack: ChatStack) -> None:
        _, token = register_and_login(stack.gateway_url)
        _require_forwarding(stack, token, "/v1/models")
        client = openai.OpenAI(base_url=stack.platform.api_url, api_key=token, max_retries=0)
        ids = [m.id for m in client.models.list().data]
        assert ids
        assert "parley-offline" not in ids  # real providers are configured
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("no-such-model")

    def test_conversation_turns_and_owner_scoping(self, stack: ChatStack, providers: dict[str, str]) -> None:
        _, alice = register_and_login(stack.gateway_url)
        _require_forwarding(stack, alice, "/v1/conversations")
        _, bob = register_and_login(stack.gateway_url)
        headers = {"authorization": f"Bearer {alice}"}
        with httpx.Client(base_url=stack.gateway_url, headers=headers, timeout=30) as http:
            conversation = http.post("/v1/conversations", json={"title": "via gateway"}).json()
            path = f"/v1/conversations/{conversation['id']}"
            with http.stream(
                "POST", path + "/messages", json={"content": "stream it", "stream": True}
            ) as response:
                assert response.status_code == 200
                data = sse_data(response.iter_lines())
            assert data[-1] == "[DONE]"
            assert all("usage" not in json.loads(d) for d in data[:-1])  # the client did not ask for it
            assert [m["role"] for m in http.get(path + "/messages").json()["data"]] == ["user", "assistant"]
        with httpx.Client(base_url=stack.gateway_url, headers={"authorization": f"Bearer {bob}"}) as http:
            assert http.get(path).status_code == 404
            assert http.delete(path).status_code == 404


class TestRateLimit:
    def test_a_429_from_the_gateway_is_a_rate_limit_error(
        self, stack: ChatStack, providers: dict[str, str]
    ) -> None:
        _, token = register_and_login(stack.gateway_url)
        client = openai.OpenAI(base_url=stack.platform.api_url, api_key=token, max_retries=0)
        first = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=1,
        )
        remaining = first.headers.get("x-ratelimit-remaining-requests")
        if remaining is None:
            pytest.skip(
                "the gateway on this branch has no rate limiter yet (issue 3: limits and x-ratelimit-*)"
            )
        if int(remaining) > 300:
            pytest.skip(
                f"the default plan allows {remaining} more requests a minute: too many to exhaust here"
            )

        def exhaust() -> None:
            for _ in range(int(remaining) + 1):
                client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=1)  # type: ignore[arg-type]

        with pytest.raises(openai.RateLimitError) as limited:
            exhaust()
        assert limited.value.status_code == 429
        assert int(limited.value.response.headers["retry-after"]) >= 0
