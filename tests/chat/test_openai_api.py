"""The OpenAI-compatible API with the official SDK: sync and async, streaming and not, typed errors,
``/v1/models`` by plan, free-plan routing, and the usage the gateway settles with."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
from parley_common.testing.processes import ProcessManager
from parley_fake_provider.tokens import completion_tokens, prompt_tokens

from tests.chat.support import ChatStack, calls, new_request_id, sse_data
from tests.support.api import register_and_login
from tests.support.platform import start_fake_provider

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "name three colours please"},
]
REPLY = "name three colours please name three colours please"  # the fake provider's 8 words


class TestThroughTheGateway:
    """A real account, the SDK pointed at the gateway, chat and a provider behind it."""

    def test_sync_sdk_completion_has_openai_shape(self, stack: ChatStack, providers: dict[str, str]) -> None:
        _, token = register_and_login(stack.gateway_url)
        client = openai.OpenAI(base_url=stack.platform.api_url, api_key=token, max_retries=0)
        completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
        assert completion.id.startswith("chatcmpl-")
        assert completion.object == "chat.completion"
        assert completion.created > 0
        assert completion.model == "gpt-4o-mini"
        assert completion.choices[0].message.content == REPLY
        assert completion.choices[0].finish_reason == "stop"
        assert completion.usage is not None
        assert completion.usage.prompt_tokens == prompt_tokens(MESSAGES)
        assert completion.usage.total_tokens == prompt_tokens(MESSAGES) + completion_tokens({}, 8)

    def test_async_sdk_stream_with_usage(self, stack: ChatStack, providers: dict[str, str]) -> None:
        _, token = register_and_login(stack.gateway_url)

        async def scenario() -> tuple[list[openai.types.chat.ChatCompletionChunk], str]:
            client = openai.AsyncOpenAI(base_url=stack.platform.api_url, api_key=token, max_retries=0)
            stream = await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=MESSAGES,  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [chunk async for chunk in stream]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            return chunks, text

        chunks, text = asyncio.run(scenario())
        assert text == REPLY
        assert all(c.object == "chat.completion.chunk" for c in chunks)
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert chunks[-1].choices == []
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == 8

    def test_typed_errors(self, stack: ChatStack, providers: dict[str, str]) -> None:
        _, token = register_and_login(stack.gateway_url)
        client = openai.OpenAI(base_url=stack.platform.api_url, api_key=token, max_retries=0)
        stranger = openai.OpenAI(base_url=stack.platform.api_url, api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            stranger.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, temperature=7)  # type: ignore[arg-type]
        assert bad.value.body["param"] == "temperature"  # type: ignore[index]
        with pytest.raises(openai.BadRequestError) as unknown:
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=MESSAGES,  # type: ignore[arg-type]
                extra_body={"no_such_parameter": 1},
            )
        assert unknown.value.body["param"] == "no_such_parameter"  # type: ignore[index]
        with pytest.raises(openai.NotFoundError) as missing:
            client.chat.completions.create(model="no-such-model", messages=MESSAGES)  # type: ignore[arg-type]
        assert missing.value.code == "model_not_found"

    def test_upstream_failure_is_an_api_status_error(
        self, stack: ChatStack, providers: dict[str, str]
    ) -> None:
        for url in providers.values():
            httpx.post(url + "/_fake/config", json={"errors": [500] * 10}).raise_for_status()
        _, token = register_and_login(stack.gateway_url)
        client = openai.OpenAI(base_url=stack.platform.api_url, api_key=token, max_retries=0)
        with pytest.raises(openai.APIStatusError) as failed:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
        assert failed.value.status_code == 502
        assert failed.value.code == "upstream_error"
        assert "fake provider" not in failed.value.message  # the provider's own words stay inside


class TestModels:
    def test_lists_what_the_plan_allows_and_nothing_offline(self, stack: ChatStack) -> None:
        user = stack.user(name="pro", allowed_models=["gpt-4o-mini", "gpt-4o", "not-served"])
        models = user.client().models.list()
        ids = [m.id for m in models.data]
        assert ids == ["gpt-4o-mini", "gpt-4o"]  # "not-served" has no provider; the offline model is off
        assert models.data[0].owned_by == "primary"
        assert user.client().models.retrieve("gpt-4o").id == "gpt-4o"
        with pytest.raises(openai.NotFoundError):
            user.client().models.retrieve("tiny-context")
        with pytest.raises(openai.NotFoundError):
            user.client().models.retrieve("parley-offline")

    def test_without_allowed_list_shows_the_routing_table(self, stack: ChatStack) -> None:
        ids = [m.id for m in stack.user(name="enterprise").client().models.list().data]
        assert ids == ["gpt-4o-mini", "gpt-4o", "tiny-context"]
        assert "parley-offline" not in ids

    def test_model_outside_the_plan_is_not_found(self, stack: ChatStack, providers: dict[str, str]) -> None:
        user = stack.user(name="free", allowed_models=["gpt-4o-mini"])
        with pytest.raises(openai.NotFoundError) as refused:
            user.client().chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
        assert refused.value.code == "model_not_found"
        assert calls(providers["primary"]) == []


class TestPlanRouting:
    def test_free_plan_is_answered_by_the_cheaper_model(
        self, stack: ChatStack, providers: dict[str, str]
    ) -> None:
        user = stack.user(
            name="free",
            allowed_models=["gpt-4o-mini", "gpt-4o"],
            model_routes={"gpt-4o": "gpt-4o-mini"},
            daily_token_quota=10_000,
            monthly_token_quota=200_000,
        )
        request_id = new_request_id()
        completion = user.client().chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,  # type: ignore[arg-type]
            extra_headers={"x-request-id": request_id},
        )
        assert completion.model == "gpt-4o-mini"
        assert [c["model"] for c in calls(providers["primary"], request_id)] == ["gpt-4o-mini"]
        listed = {m.id: m for m in user.client().models.list().data}
        assert listed["gpt-4o"].model_extra == {"routed_to": "gpt-4o-mini"}

        [event] = user.events()
        assert event["model"] == "gpt-4o-mini"
        assert event["request_id"] == request_id
        assert event["provider"] == "primary"
        assert (event["plan"], event["daily_token_quota"], event["monthly_token_quota"]) == (
            "free",
            10_000,
            200_000,
        )
        assert (event["status"], event["cached"], event["estimated"]) == ("completed", False, False)
        assert (event["prompt_tokens"], event["completion_tokens"]) == (prompt_tokens(MESSAGES), 8)

    def test_request_without_model_uses_the_plan_default(
        self, stack: ChatStack, providers: dict[str, str]
    ) -> None:
        user = stack.user(name="pro", default_model="gpt-4o")
        response = user.http().post("/v1/chat/completions", json={"messages": MESSAGES})
        assert response.status_code == 200
        assert response.json()["model"] == "gpt-4o"


class TestUsageForTheGateway:
    """``x-parley-usage: 1`` (sent by the gateway) makes chat report usage whatever the client asked."""

    def _stream(self, user_http: httpx.Client, headers: dict[str, str], **body: object) -> list[str]:
        payload = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True, **body}
        with user_http.stream("POST", "/v1/chat/completions", json=payload, headers=headers) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            return sse_data(response.iter_lines())

    def test_stream_ends_with_usage_chunk_when_the_gateway_asks(
        self, stack: ChatStack, providers: dict[str, str]
    ) -> None:
        with stack.user().http() as http:
            data = self._stream(http, {"x-parley-usage": "1"})
        assert data[-1] == "[DONE]"
        usage_chunk = json.loads(data[-2])
        assert usage_chunk["choices"] == []
        assert usage_chunk["usage"]["completion_tokens"] == 8
        assert usage_chunk["usage"]["prompt_tokens"] == prompt_tokens(MESSAGES)
        assert all(json.loads(d)["choices"] for d in data[:-2])

    def test_stream_hides_usage_unless_asked(self, stack: ChatStack, providers: dict[str, str]) -> None:
        with stack.user().http() as http:
            plain = self._stream(http, {})
            asked = self._stream(http, {}, stream_options={"include_usage": True})
        assert plain[-1] == "[DONE]"
        assert all(json.loads(d).get("usage") is None for d in plain[:-1])
        assert json.loads(asked[-2])["usage"]["completion_tokens"] == 8

    def test_non_streamed_body_carries_usage(self, stack: ChatStack, providers: dict[str, str]) -> None:
        with stack.user().http() as http:
            response = http.post(
                "/v1/chat/completions",
                json={"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 3},
                headers={"x-parley-usage": "1"},
            )
        assert response.json()["usage"] == {
            "prompt_tokens": prompt_tokens(MESSAGES),
            "completion_tokens": 3,
            "total_tokens": prompt_tokens(MESSAGES) + 3,
        }

    def test_a_token_for_another_audience_is_refused(self, stack: ChatStack) -> None:
        _, access_token = register_and_login(stack.gateway_url)  # the user's own token, not an internal one
        response = httpx.post(
            stack.chat_url + "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": MESSAGES},
            headers={"authorization": f"Bearer {access_token}"},
        )
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_token"


class TestOfflineModel:
    """No provider configured: the built-in offline model (the fake provider ``make run`` starts) answers."""

    def test_offline_model_is_labelled_and_answers_every_model(
        self, stack: ChatStack, processes: ProcessManager
    ) -> None:
        _, offline_url = start_fake_provider(processes, "--chunks", "4", name="offline-model")
        chat = stack.spawn_chat(
            "chat-offline",
            {"PARLEY_PROVIDERS": "[]", "PARLEY_OFFLINE_MODEL_URL": offline_url + "/v1"},
            processes,
        )
        user = stack.user(name="free", default_model="gpt-4o-mini", allowed_models=["gpt-4o-mini"])
        [model] = user.client(chat).models.list().data
        assert (model.id, model.owned_by) == ("parley-offline", "parley-offline")
        assert "offline" in (model.model_extra or {})["description"]

        for requested in ("gpt-4o-mini", None, "parley-offline"):
            body = {"messages": MESSAGES, **({"model": requested} if requested else {})}
            with user.http(chat) as http:
                answer = http.post("/v1/chat/completions", json=body).json()
            assert answer["model"] == "parley-offline"
            assert answer["choices"][0]["message"]["content"] == "name three colours please"
        assert {c["model"] for c in calls(offline_url)} == {"parley-offline"}
        assert {(e["model"], e["provider"]) for e in user.events()} == {("parley-offline", "offline")}
        with pytest.raises(openai.NotFoundError):
            user.client(chat).chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
