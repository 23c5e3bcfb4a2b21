"""Chat's routes reached the way clients reach them: through the gateway, with a real account and the
plan the gateway attaches (models, documents, rate limits)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.chat.support import ChatStack, sse_data
from tests.support.api import new_email, promote_to_admin, register_and_login

MESSAGES = [{"role": "user", "content": "hello through the gateway"}]


class TestThroughTheGateway:
    def test_models_by_plan(self, stack: ChatStack) -> None:
        _, token = register_and_login(stack.gateway_url)
        client = openai.OpenAI(base_url=stack.platform.api_url, api_key=token, max_retries=0)
        ids = [m.id for m in client.models.list().data]
        assert ids
        assert "parley-offline" not in ids  # real providers are configured
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("no-such-model")

    def test_conversation_turns_and_owner_scoping(self, stack: ChatStack, providers: dict[str, str]) -> None:
        _, alice = register_and_login(stack.gateway_url)
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

    def test_documents_with_the_plan_the_gateway_attaches(
        self, stack: ChatStack, providers: dict[str, str]
    ) -> None:
        _, alice = register_and_login(stack.gateway_url)  # the free plan: retrieval included
        _, bob = register_and_login(stack.gateway_url)
        with httpx.Client(base_url=stack.gateway_url, headers={"authorization": f"Bearer {alice}"}) as http:
            added = http.post(
                "/v1/documents", json={"title": "Trams", "content": "Tram 28 goes to the castle."}
            )
            assert added.status_code == 201, added.text
            path = f"/v1/documents/{added.json()['id']}"
            assert [d["id"] for d in http.get("/v1/documents").json()["data"]] == [added.json()["id"]]
            conversation = http.post("/v1/conversations", json={}).json()
            turn = http.post(
                f"/v1/conversations/{conversation['id']}/messages",
                json={"content": "Which tram goes to the castle?", "documents": "all"},
            )
            assert turn.status_code == 201, turn.text
            assert turn.headers["x-parley-sources"] == f"{added.json()['id']}#0"
        with httpx.Client(base_url=stack.gateway_url, headers={"authorization": f"Bearer {bob}"}) as http:
            assert http.get(path).status_code == 404
            assert http.delete(path).status_code == 404


class TestRateLimit:
    def test_a_429_from_the_gateway_is_a_rate_limit_error(self, stack: ChatStack) -> None:
        admin_email = new_email()
        register_and_login(stack.gateway_url, admin_email)
        promote_to_admin(stack.config.base_env(), admin_email)
        _, admin_token = register_and_login(stack.gateway_url, admin_email, register=False)
        user_id, token = register_and_login(stack.gateway_url)
        changed = httpx.patch(
            f"{stack.gateway_url}/v1/admin/users/{user_id}",
            json={"plan_overrides": {"requests_per_minute": 2}},
            headers={"authorization": f"Bearer {admin_token}"},
            timeout=10,
        )
        assert changed.status_code == 200, changed.text

        client = openai.OpenAI(base_url=stack.platform.api_url, api_key=token, max_retries=0)
        for _ in range(2):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=1)  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError) as limited:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=1)  # type: ignore[arg-type]
        assert limited.value.status_code == 429
        assert int(limited.value.response.headers["retry-after"]) >= 1
        assert limited.value.response.headers["x-ratelimit-remaining-requests"] == "0"
