"""The exact response cache: deterministic requests of one user hit, nobody else's ever do, and Redis
failing costs nothing but misses."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.chat.support import ChatStack, User, calls

MESSAGES = [{"role": "user", "content": "what is the capital of France"}]


def _ask(who: User, chat_url: str | None = None, **kwargs: object) -> tuple[str, str | None]:
    """(reply text, x-parley-cache header) of one non-streamed request."""
    raw = who.client(chat_url).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=MESSAGES,  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )
    return raw.parse().choices[0].message.content or "", raw.headers.get("x-parley-cache")


def _provider_calls(stack: ChatStack) -> int:
    return len(calls(stack.providers["primary"])) + len(calls(stack.providers["secondary"]))


class TestExactCache:
    def test_identical_deterministic_requests_of_one_user_hit(
        self, stack: ChatStack, providers: dict[str, str]
    ) -> None:
        user = stack.user(name="pro", cache="exact")
        first, first_status = _ask(user, temperature=0)
        before = _provider_calls(stack)
        second, second_status = _ask(user, temperature=0)
        assert (first_status, second_status) == ("miss", "hit")
        assert second == first
        assert _provider_calls(stack) == before  # the hit never reached a provider
        miss, hit = user.events()
        assert (miss["cached"], miss["provider"]) == (False, "primary")
        assert (hit["cached"], hit["provider"], hit["status"]) == (True, "cache", "completed")
        assert (hit["prompt_tokens"], hit["completion_tokens"]) == (
            miss["prompt_tokens"],
            miss["completion_tokens"],
        )

    def test_a_hit_is_streamed_when_asked(self, stack: ChatStack, providers: dict[str, str]) -> None:
        user = stack.user(name="pro", cache="exact")
        text, _ = _ask(user, temperature=0)
        before = _provider_calls(stack)
        raw = user.client().chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=MESSAGES,  # type: ignore[arg-type]
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        assert raw.headers["x-parley-cache"] == "hit"
        chunks = list(raw.parse())
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == 8
        assert _provider_calls(stack) == before
        assert user.events()[-1]["cached"] is True

    def test_a_streamed_answer_is_cached_too(self, stack: ChatStack, providers: dict[str, str]) -> None:
        user = stack.user(name="pro", cache="exact")
        streamed = user.client().chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            temperature=0,
            stream=True,  # type: ignore[arg-type]
        )
        assert streamed.headers["x-parley-cache"] == "miss"
        text = "".join(c.choices[0].delta.content or "" for c in streamed.parse() if c.choices)
        assert _ask(user, temperature=0) == (text, "hit")

    def test_the_same_request_from_another_user_misses(
        self, stack: ChatStack, providers: dict[str, str]
    ) -> None:
        alice, bob = stack.user(name="pro", cache="exact"), stack.user(name="pro", cache="exact")
        _ask(alice, temperature=0)
        assert _ask(alice, temperature=0)[1] == "hit"
        before = _provider_calls(stack)
        assert _ask(bob, temperature=0)[1] == "miss"
        assert _provider_calls(stack) == before + 1
        assert [e["cached"] for e in bob.events()] == [False]

    def test_output_changing_parameters_are_part_of_the_key(
        self, stack: ChatStack, providers: dict[str, str]
    ) -> None:
        user = stack.user(name="pro", cache="exact")
        assert _ask(user, temperature=0)[1] == "miss"
        assert _ask(user, temperature=0, max_tokens=3)[1] == "miss"
        assert _ask(user, temperature=0, max_tokens=3) == ("what is the", "hit")
        assert _ask(user, temperature=0, user="someone-else-id")[1] == "hit"  # `user` changes nothing

    def test_whitespace_and_text_parts_are_normalised(
        self, stack: ChatStack, providers: dict[str, str]
    ) -> None:
        user = stack.user(name="pro", cache="exact")
        _ask(user, temperature=0)
        raw = user.client().chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[
                {"role": "user", "content": [{"type": "text", "text": "  what is the capital of France\n"}]}
            ],
            temperature=0,
        )
        assert raw.headers["x-parley-cache"] == "hit"

    def test_non_deterministic_requests_are_not_cached_unless_opted_in(
        self, stack: ChatStack, providers: dict[str, str]
    ) -> None:
        user = stack.user(name="pro", cache="exact")
        assert _ask(user, temperature=0.7)[1] is None
        assert _ask(user, temperature=0.7)[1] is None
        assert _ask(user)[1] is None  # no temperature: the provider's default, not deterministic
        assert len(calls(stack.providers["primary"])) == 3
        assert _ask(user, temperature=0.7, extra_body={"parley_cache": True})[1] == "miss"
        assert _ask(user, temperature=0.7, extra_body={"parley_cache": True})[1] == "hit"
        assert _ask(user, temperature=0, extra_body={"parley_cache": False})[1] is None

    def test_a_plan_without_caching_never_caches(self, stack: ChatStack, providers: dict[str, str]) -> None:
        user = stack.user(name="free", cache="off")
        assert [_ask(user, temperature=0)[1] for _ in range(2)] == [None, None]
        assert len(calls(stack.providers["primary"])) == 2
        assert all(e["cached"] is False for e in user.events())

    def test_cache_keys_are_scoped_by_user_and_prefix(
        self, stack: ChatStack, providers: dict[str, str]
    ) -> None:
        user = stack.user(name="pro", cache="exact")
        _ask(user, temperature=0)
        client = redis.Redis.from_url(stack.config.redis_url)
        try:
            keys = list(client.scan_iter(match=f"{stack.config.redis_prefix}chat:cache:v1:{user.user_id}:*"))
            assert len(keys) == 1
            assert client.ttl(keys[0]) > 0
        finally:
            client.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A redis-server of this test's own, which the test may freeze and kill."""
    from parley_common.testing.net import free_port

    port = free_port()
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url, socket_connect_timeout=0.2).ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.05)
    try:
        yield process, url
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
        process.wait(timeout=10)


@pytest.mark.chaos
class TestCacheFailsOpen:
    def test_redis_frozen_then_gone_costs_only_misses(
        self, stack: ChatStack, providers: dict[str, str], private_redis: tuple[subprocess.Popen[bytes], str]
    ) -> None:
        process, url = private_redis
        chat = stack.spawn_chat(
            "chat-private-cache", {"PARLEY_CACHE_REDIS_URL": url, "PARLEY_CACHE_PAUSE_AFTER_ERROR": "1.0"}
        )
        user = stack.user(name="pro", cache="exact")
        assert _ask(user, chat, temperature=0)[1] == "miss"
        assert _ask(user, chat, temperature=0)[1] == "hit"

        os.kill(process.pid, signal.SIGSTOP)  # Redis keeps its port open but never answers
        for _ in range(3):
            started = time.monotonic()
            text, status = _ask(user, chat, temperature=0)
            assert text.startswith("what is the capital")
            assert status == "miss"
            assert time.monotonic() - started < 1.5  # one timeout (0.5 s) at most, then the cache is paused
        os.kill(process.pid, signal.SIGCONT)

        deadline = time.monotonic() + 10
        while _ask(user, chat, temperature=0)[1] != "hit":
            assert time.monotonic() < deadline, "the cache did not come back with Redis"
            time.sleep(0.2)

        process.kill()  # now Redis is gone altogether: connections are refused
        process.wait(timeout=10)
        for _ in range(3):
            started = time.monotonic()
            assert _ask(user, chat, temperature=0)[1] == "miss"
            assert time.monotonic() - started < 1.5
        assert {e["status"] for e in user.events()} == {"completed"}
