"""One request travels the whole way: client → gateway → chat → provider → outbox → RabbitMQ → usage
worker → ledger, with every process a real subprocess on loopback and the official openai SDK as client."""

from __future__ import annotations

import openai
import pytest
from parley_fake_provider.tokens import completion_tokens, prompt_tokens

from tests.support.api import eventually, register_and_login
from tests.support.db import ledger_rows
from tests.support.platform import Platform

pytestmark = pytest.mark.e2e

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "name three colours please"},
]
DEFAULT_CHUNKS = 8  # the fake provider's default reply length


class TestOpenAISDKThroughGateway:
    def test_completion_and_stream_each_land_once_in_ledger_with_provider_counts(
        self, platform: Platform, database_url: str
    ) -> None:
        user_id, token = register_and_login(platform.gateway_url)
        client = openai.OpenAI(base_url=platform.api_url, api_key=token, max_retries=0)
        expected_prompt = prompt_tokens(MESSAGES)
        expected_completion = completion_tokens({}, DEFAULT_CHUNKS)

        completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
        assert completion.choices[0].message.content == "name three colours please name three colours please"
        assert completion.usage is not None
        assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
            expected_prompt,
            expected_completion,
        )

        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},  # type: ignore[arg-type]
        )
        pieces, usage = [], None
        for chunk in stream:
            pieces.extend(c.delta.content or "" for c in chunk.choices)
            usage = chunk.usage or usage
        assert "".join(pieces) == completion.choices[0].message.content
        assert usage is not None
        assert usage.completion_tokens == expected_completion

        rows = eventually(
            lambda: (r := ledger_rows(database_url, user_id)) and len(r) >= 2 and r, what="two ledger rows"
        )
        assert len(rows) == 2
        assert len({row["event_id"] for row in rows}) == 2
        for row in rows:
            assert (row["prompt_tokens"], row["completion_tokens"]) == (expected_prompt, expected_completion)
            assert row["status"] == "completed"
            assert row["estimated"] is False
            assert row["model"] == "gpt-4o-mini"

    def test_stream_without_usage_option_hides_usage_chunk_but_ledger_still_counts(
        self, platform: Platform, database_url: str
    ) -> None:
        user_id, token = register_and_login(platform.gateway_url)
        client = openai.OpenAI(base_url=platform.api_url, api_key=token, max_retries=0)
        chunks = list(
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True, max_tokens=3)
        )  # type: ignore[arg-type]
        assert all(chunk.usage is None for chunk in chunks)
        rows = eventually(lambda: ledger_rows(database_url, user_id), what="ledger row")
        assert [(r["prompt_tokens"], r["completion_tokens"]) for r in rows] == [(prompt_tokens(MESSAGES), 3)]

    def test_async_sdk_gets_typed_errors(self, platform: Platform) -> None:
        import asyncio

        async def scenario() -> None:
            bad = openai.AsyncOpenAI(base_url=platform.api_url, api_key="not-a-token", max_retries=0)
            with pytest.raises(openai.AuthenticationError):
                await bad.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
            _, token = register_and_login(platform.gateway_url)
            good = openai.AsyncOpenAI(base_url=platform.api_url, api_key=token, max_retries=0)
            with pytest.raises(openai.BadRequestError) as excinfo:
                await good.chat.completions.create(model="gpt-4o-mini", messages=[])
            assert excinfo.value.body is not None
            with pytest.raises(openai.BadRequestError):
                await good.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, temperature=7)  # type: ignore[arg-type]

        asyncio.run(scenario())


class TestOneTrace:
    def test_gateway_chat_and_worker_log_the_same_trace_id(
        self, platform: Platform, database_url: str
    ) -> None:
        user_id, token = register_and_login(platform.gateway_url)
        client = openai.OpenAI(base_url=platform.api_url, api_key=token, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
        request_id = raw.headers["x-request-id"]
        eventually(lambda: ledger_rows(database_url, user_id), what="ledger row")

        def line(process: str, event: str, **match: str) -> dict[str, object]:
            return platform.processes[process].wait_for_log(
                lambda r: r.get("event") == event and all(r.get(k) == v for k, v in match.items()), timeout=10
            )

        gateway = line("gateway", "http.request", request_id=request_id, path="/v1/chat/completions")
        chat = line("chat", "completion.recorded", request_id=request_id)
        worker = line("usage-worker", "event.handled", event_id=str(chat["event_id"]))
        assert gateway["trace_id"]
        assert len(str(gateway["trace_id"])) == 32
        assert gateway["trace_id"] == chat["trace_id"] == worker["trace_id"]
        # The provider received the same trace too (trace context crossed every hop).
        stats = __import__("httpx").get(platform.provider_url + "/_fake/stats").json()
        traceparents = [
            c["headers"].get("traceparent", "")
            for c in stats["calls"]
            if c["headers"].get("x-request-id") == request_id
        ]
        assert traceparents
        assert traceparents[0].split("-")[1] == gateway["trace_id"]
