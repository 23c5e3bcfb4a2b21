"""Routing over two providers: retries with backoff, fallback, timeouts, and streams that break.

The routing table (tests/chat/support.py) serves gpt-4o-mini from ``primary`` (timeout 1 s, one retry),
then ``secondary``; each fake provider checks its own API key.
"""

from __future__ import annotations

import json
import time

import openai
import pytest
from parley_fake_provider.tokens import prompt_tokens

from tests.chat.support import ChatStack, calls, configure, new_request_id

MESSAGES = [{"role": "user", "content": "tell me about the sea"}]


def _create(client: openai.OpenAI, request_id: str, **kwargs: object) -> object:
    return client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,  # type: ignore[arg-type]
        extra_headers={"x-request-id": request_id},
        **kwargs,  # type: ignore[arg-type]
    )


def _outcomes(url: str, request_id: str) -> list[str]:
    return [c["outcome"] for c in calls(url, request_id)]


class TestFallback:
    @pytest.mark.parametrize("stream", [False, True])
    def test_primary_500s_then_secondary_answers(
        self, stack: ChatStack, providers: dict[str, str], stream: bool
    ) -> None:
        configure(providers["primary"], errors=[500, 500])
        user, request_id = stack.user(), new_request_id()
        response = _create(user.client(), request_id, stream=stream)
        text = (
            "".join(c.choices[0].delta.content or "" for c in response if c.choices)  # type: ignore[attr-defined]
            if stream
            else response.choices[0].message.content  # type: ignore[attr-defined]
        )
        assert text.startswith("tell me about the sea")
        assert _outcomes(providers["primary"], request_id) == [
            "error:500",
            "error:500",
        ]  # one retry, then move on
        assert _outcomes(providers["secondary"], request_id) == ["completed"]
        [event] = user.events()
        assert (event["provider"], event["status"], event["estimated"]) == ("secondary", "completed", False)

    def test_a_429_is_retried_on_the_same_provider(self, stack: ChatStack, providers: dict[str, str]) -> None:
        configure(providers["primary"], errors=[429], retry_after=0)
        user, request_id = stack.user(), new_request_id()
        _create(user.client(), request_id)
        assert _outcomes(providers["primary"], request_id) == ["error:429", "completed"]
        assert calls(providers["secondary"], request_id) == []

    def test_a_long_retry_after_moves_on_at_once(self, stack: ChatStack, providers: dict[str, str]) -> None:
        configure(providers["primary"], errors=[429], retry_after=30)
        user, request_id = stack.user(), new_request_id()
        started = time.monotonic()
        _create(user.client(), request_id)
        assert time.monotonic() - started < 5  # did not wait 30 s
        assert _outcomes(providers["primary"], request_id) == ["error:429"]
        assert _outcomes(providers["secondary"], request_id) == ["completed"]

    @pytest.mark.parametrize("stream", [False, True])
    def test_a_timeout_falls_back(self, stack: ChatStack, providers: dict[str, str], stream: bool) -> None:
        configure(providers["primary"], first_token_delay_ms=3_000)  # its timeout is 1 s
        user, request_id = stack.user(), new_request_id()
        started = time.monotonic()
        response = _create(user.client(), request_id, stream=stream)
        if stream:
            assert [c for c in response if c.choices]  # type: ignore[attr-defined]
        assert 2.0 <= time.monotonic() - started < 3.0 + 2  # two attempts of 1 s, well before 3 s + 3 s
        assert len(calls(providers["primary"], request_id)) == 2
        assert _outcomes(providers["secondary"], request_id) == ["completed"]
        assert user.events()[0]["provider"] == "secondary"

    def test_a_wrong_key_skips_to_the_next_provider_without_retrying(
        self, stack: ChatStack, providers: dict[str, str]
    ) -> None:
        configure(providers["primary"], api_key="rotated-elsewhere")
        user, request_id = stack.user(), new_request_id()
        _create(user.client(), request_id)
        assert _outcomes(providers["primary"], request_id) == ["error:401"]
        assert _outcomes(providers["secondary"], request_id) == ["completed"]

    def test_a_bad_request_is_neither_retried_nor_passed_on(
        self, stack: ChatStack, providers: dict[str, str]
    ) -> None:
        configure(providers["primary"], errors=[400])
        user, request_id = stack.user(), new_request_id()
        with pytest.raises(openai.BadRequestError):
            _create(user.client(), request_id)
        assert _outcomes(providers["primary"], request_id) == ["error:400"]
        assert calls(providers["secondary"], request_id) == []

    def test_every_provider_down_is_a_502_with_a_failed_usage_record(
        self, stack: ChatStack, providers: dict[str, str]
    ) -> None:
        for url in providers.values():
            configure(url, errors=[503] * 5)
        user, request_id = stack.user(), new_request_id()
        with pytest.raises(openai.APIStatusError) as failed:
            _create(user.client(), request_id, stream=True)
        assert failed.value.status_code == 502
        assert len(calls(providers["primary"], request_id)) == 2
        assert len(calls(providers["secondary"], request_id)) == 2
        [event] = user.events()
        assert (event["status"], event["prompt_tokens"], event["completion_tokens"]) == ("failed", 0, 0)


class TestBrokenStreams:
    """After the first byte reached the client nothing is retried: the stream ends with an error event."""

    def test_stream_failing_mid_way_ends_with_an_error_event_and_a_usage_record(
        self, stack: ChatStack, providers: dict[str, str]
    ) -> None:
        configure(providers["primary"], chunks=20, fail_stream_after=5)
        user, request_id = stack.user(), new_request_id()
        received: list[str] = []
        stream = _create(user.client(), request_id, stream=True)

        def read_all() -> None:
            for chunk in stream:  # type: ignore[attr-defined]
                received.extend(c.delta.content or "" for c in chunk.choices)

        with pytest.raises(openai.APIError) as broken:
            read_all()
        assert "mid-stream" in broken.value.message
        assert len([piece for piece in received if piece]) == 5
        assert _outcomes(providers["primary"], request_id) == ["failed"]
        assert calls(providers["secondary"], request_id) == []  # never retried after the first byte
        [event] = user.events()
        assert event["status"] == "failed"
        assert event["estimated"] is True
        assert event["completion_tokens"] >= 5
        assert event["prompt_tokens"] >= prompt_tokens(MESSAGES) - 3  # our estimate, close to the provider's

    def test_stream_stalling_mid_way_times_out_into_an_error_event(
        self, stack: ChatStack, providers: dict[str, str]
    ) -> None:
        configure(providers["primary"], chunks=20, stall_stream_after=3)
        user, request_id = stack.user(), new_request_id()
        with (
            user.http() as http,
            http.stream(
                "POST",
                "/v1/chat/completions",
                json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True},
                headers={"x-request-id": request_id, "x-parley-usage": "1"},
            ) as response,
        ):
            assert response.status_code == 200
            data = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
        assert json.loads(data[-1])["error"]["code"] == "upstream_error"
        assert '"usage"' in data[-2]  # the gateway still gets usage to settle with
        assert "[DONE]" not in data
        assert _outcomes(providers["primary"], request_id) == ["cancelled"]  # chat closed it on timeout
        [event] = user.events()
        assert (event["status"], event["estimated"]) == ("failed", True)
        assert event["completion_tokens"] >= 3
