"""The semantic cache (plans with ``cache: semantic``): a reworded question of the same user in the same
context gets the cached answer; a different question, another user, another context or an exact-only
plan never does; the index is bounded per partition and lives in Redis with the answers.

The fake provider echoes the prompt, so an answer shows which wording reached the model."""

from __future__ import annotations

from typing import Any

import redis

from tests.chat.support import ChatStack, User, calls

FIRST = "What is the capital of France?"
REWORDED = "Tell me the capital of France."


def _ask(
    who: User, content: str, chat_url: str | None = None, *, system: str | None = None, **kwargs: Any
) -> tuple[str, str | None]:
    """(reply text, x-parley-cache header) of one deterministic, non-streamed request."""
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": content})
    raw = who.client(chat_url).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=messages,  # type: ignore[arg-type]
        temperature=0,
        **kwargs,
    )
    return raw.parse().choices[0].message.content or "", raw.headers.get("x-parley-cache")


def _provider_calls(stack: ChatStack) -> int:
    return len(calls(stack.providers["primary"])) + len(calls(stack.providers["secondary"]))


def _partitions(stack: ChatStack, user: User) -> dict[bytes, int]:
    client = redis.Redis.from_url(stack.config.redis_url)
    try:
        pattern = f"{stack.config.redis_prefix}chat:semantic:v1:{user.user_id}:*"
        return {key: client.hlen(key) for key in client.scan_iter(match=pattern)}
    finally:
        client.close()


class TestSemanticCache:
    def test_a_reworded_question_gets_the_cached_answer(
        self, stack: ChatStack, providers: dict[str, str]
    ) -> None:
        user = stack.user(name="pro", cache="semantic")
        answer, status = _ask(user, FIRST)
        assert status == "miss"
        before = _provider_calls(stack)
        assert _ask(user, REWORDED) == (answer, "semantic-hit")
        assert _provider_calls(stack) == before  # the model never saw the second wording
        assert _ask(user, FIRST) == (answer, "hit")  # the first wording still hits exactly
        miss, semantic, exact = user.events()
        assert (miss["cached"], semantic["cached"], exact["cached"]) == (False, True, True)
        assert semantic["provider"] == "cache"
        assert semantic["completion_tokens"] == miss["completion_tokens"]

    def test_a_semantic_hit_is_streamed_when_asked(self, stack: ChatStack, providers: dict[str, str]) -> None:
        user = stack.user(name="pro", cache="semantic")
        answer, _ = _ask(user, FIRST)
        raw = user.client().chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": REWORDED}],
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        assert raw.headers["x-parley-cache"] == "semantic-hit"
        chunks = list(raw.parse())
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
        assert chunks[-1].usage is not None

    def test_a_different_question_misses(self, stack: ChatStack, providers: dict[str, str]) -> None:
        user = stack.user(name="pro", cache="semantic")
        _ask(user, FIRST)
        before = _provider_calls(stack)
        # 0.66 with this model: close in words, not in meaning.
        answer, status = _ask(user, "What is the capital of Germany?")
        assert status == "miss"
        assert "germany" in answer.lower()
        assert _provider_calls(stack) == before + 1

    def test_questions_with_different_numbers_never_share_an_answer(
        self, stack: ChatStack, providers: dict[str, str]
    ) -> None:
        user = stack.user(name="pro", cache="semantic")
        answer, _ = _ask(user, "What is 2+2?")
        assert _ask(user, "What is 2+3?")[1] == "miss"  # 0.89 apart: the numbers decide, not the model
        assert _ask(user, "What is 12+2?")[1] == "miss"
        assert _ask(user, "Tell me what 2+2 is.") == (answer, "semantic-hit")

    def test_another_user_never_gets_the_answer(self, stack: ChatStack, providers: dict[str, str]) -> None:
        alice = stack.user(name="pro", cache="semantic")
        bob = stack.user(name="pro", cache="semantic")
        _ask(alice, FIRST)
        assert _ask(alice, REWORDED)[1] == "semantic-hit"
        assert _ask(bob, REWORDED)[1] == "miss"
        assert [e["cached"] for e in bob.events()] == [False]

    def test_another_context_misses(self, stack: ChatStack, providers: dict[str, str]) -> None:
        user = stack.user(name="pro", cache="semantic")
        _ask(user, FIRST, system="Answer in one word.")
        assert _ask(user, REWORDED, system="Answer in one word.")[1] == "semantic-hit"
        assert _ask(user, REWORDED, system="Answer at length.")[1] == "miss"
        assert _ask(user, REWORDED)[1] == "miss"  # no system prompt at all
        assert _ask(user, REWORDED, system="Answer in one word.", max_tokens=3)[1] == "miss"

    def test_an_exact_plan_never_matches_a_rewording(
        self, stack: ChatStack, providers: dict[str, str]
    ) -> None:
        user = stack.user(name="pro", cache="exact")
        _ask(user, FIRST)
        assert _ask(user, REWORDED)[1] == "miss"
        assert _partitions(stack, user) == {}

    def test_a_question_whose_answer_expired_is_forgotten(
        self, stack: ChatStack, providers: dict[str, str]
    ) -> None:
        user = stack.user(name="pro", cache="semantic")
        _ask(user, FIRST)
        client = redis.Redis.from_url(stack.config.redis_url)
        try:
            (partition,) = _partitions(stack, user)
            (first_key,) = client.hkeys(partition)
            client.delete(first_key)  # the answer expired
            before = _provider_calls(stack)
            assert _ask(user, REWORDED)[1] == "miss"
            assert _provider_calls(stack) == before + 1
            (kept,) = client.hkeys(partition)  # the stale question is gone, the new one indexed
            assert kept != first_key
            assert client.exists(kept)
        finally:
            client.close()

    def test_each_partition_is_bounded_and_expires(self, stack: ChatStack, providers: dict[str, str]) -> None:
        chat_url = stack.spawn_chat("chat-semantic-small", {"PARLEY_CACHE_SEMANTIC_MAX_ENTRIES": "2"})
        user = stack.user(name="pro", cache="semantic")
        questions = ["How do I bake bread?", "What is the tallest mountain?", "Who wrote Hamlet?"]
        for question in questions:
            assert _ask(user, question, chat_url)[1] == "miss"
        (size,) = _partitions(stack, user).values()
        assert size == 2
        client = redis.Redis.from_url(stack.config.redis_url)
        try:
            (key,) = _partitions(stack, user)
            assert 0 < client.ttl(key) <= 86_400
        finally:
            client.close()
        # The newest question is always kept (a random older one gave way).
        assert _ask(user, "Who is the author of Hamlet?", chat_url)[1] == "semantic-hit"
