"""The fake provider behaves like an OpenAI-compatible API, predictably, as a real process."""

from __future__ import annotations

import httpx
import openai
import pytest
from parley_common.testing.processes import ProcessManager
from parley_fake_provider.tokens import completion_tokens, prompt_tokens, reply_words

from tests.support.platform import start_fake_provider

MESSAGES = [{"role": "user", "content": "one two three"}]


def test_token_counts_are_a_pure_function_of_the_request() -> None:
    assert prompt_tokens(MESSAGES) == 2 + 4 + 3
    assert completion_tokens({"max_tokens": 5}, 8) == 5
    assert completion_tokens({}, 8) == 8
    assert reply_words(MESSAGES, 4) == ["one", "two", "three", "one"]


def test_sdk_completion_stream_usage_and_errors(processes: ProcessManager) -> None:
    _, url = start_fake_provider(processes, "--chunks", "6", "--errors", "500,429", "--retry-after", "1")
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert limited.value.response.headers["retry-after"] == "1"

    done = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert done.usage is not None
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (9, 6)
    assert done.choices[0].finish_reason == "stop"

    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=2,  # type: ignore[arg-type]
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 2
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"

    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)  # type: ignore[arg-type]
    stats = httpx.get(url + "/_fake/stats").json()
    assert stats["total_calls"] == 5
    assert stats["outcomes"] == {"error:500": 1, "error:429": 1, "completed": 2, "error:404": 1}


def test_a_client_that_goes_away_is_seen_as_cancelled(processes: ProcessManager) -> None:
    _, url = start_fake_provider(processes, "--chunks", "50", "--chunk-delay-ms", "50")
    with httpx.stream(
        "POST",
        url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True},
    ) as response:
        for n, _ in enumerate(response.iter_lines()):
            if n >= 3:
                break

    def outcome() -> str:
        return str(httpx.get(url + "/_fake/stats").json()["calls"][0]["outcome"])

    from tests.support.api import eventually

    eventually(lambda: outcome() == "cancelled", timeout=5, what="the provider to see the cancellation")
