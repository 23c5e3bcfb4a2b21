"""Clients that leave mid-stream: the provider call is cancelled at once and usage is still recorded."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import openai

from tests.chat.support import ChatStack, calls, configure, new_request_id, outbox_events
from tests.support.api import eventually, register_and_login

STREAMS = 100
CONCURRENCY = 10
CHUNKS = 60  # words of each reply, 40 ms apart; every cut happens in the first half, over a second before
CHUNK_DELAY_MS = 40  # the end, so "cancelled" does not depend on how busy this shared machine is
MESSAGES = [{"role": "user", "content": "count sheep for me slowly"}]


async def _cut_stream(client: openai.AsyncOpenAI, after: int, request_id: str) -> dict[str, Any]:
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        extra_headers={"x-request-id": request_id},
    )
    delivered = 0
    async for chunk in stream:
        delivered += sum(1 for c in chunk.choices if c.delta.content)
        if delivered >= after:
            break
    cut_at = time.time()
    await stream.close()
    return {"request_id": request_id, "delivered": delivered, "cut_at": cut_at}


class TestClientDisconnects:
    def test_100_streams_cut_at_random_points(
        self, stack: ChatStack, providers: dict[str, str], database_url: str
    ) -> None:
        configure(providers["primary"], chunks=CHUNKS, chunk_delay_ms=CHUNK_DELAY_MS)
        user_id, token = register_and_login(stack.gateway_url)
        rng = random.Random(20_240_601)
        cut_points = [rng.randint(1, CHUNKS // 2) for _ in range(STREAMS)]

        async def run() -> list[dict[str, Any]]:
            client = openai.AsyncOpenAI(base_url=stack.platform.api_url, api_key=token, max_retries=0)
            limit = asyncio.Semaphore(CONCURRENCY)

            async def one(after: int) -> dict[str, Any]:
                async with limit:
                    return await _cut_stream(client, after, new_request_id())

            try:
                return await asyncio.gather(*(one(after) for after in cut_points))
            finally:
                await client.close()

        cuts = asyncio.run(run())
        assert [c["delivered"] for c in cuts] == cut_points

        events = eventually(
            lambda: (
                (e := outbox_events(database_url, user_id, "usage.tokens_consumed.v1"))
                and len(e) >= STREAMS
                and e
            ),
            timeout=30,
            what=f"{STREAMS} usage events",
        )
        assert len(events) == STREAMS
        by_request = {e["request_id"]: e for e in events}
        for cut in cuts:
            event = by_request[cut["request_id"]]
            assert event["status"] == "cancelled"
            assert event["estimated"] is True  # the provider's usage chunk never came
            assert event["completion_tokens"] >= cut["delivered"]
            assert event["prompt_tokens"] > 0

        def provider_closed_all() -> list[dict[str, Any]] | None:
            found = {c["headers"].get("x-request-id"): c for c in calls(providers["primary"])}
            closed = [found.get(cut["request_id"]) for cut in cuts]
            return closed if all(c and c["ended"] for c in closed) else None

        closed = eventually(provider_closed_all, timeout=10, what="every upstream call closed")
        lags = []
        for cut, call in zip(cuts, closed, strict=True):
            assert call["outcome"] == "cancelled"
            assert call["chunks_sent"] < CHUNKS
            lags.append(call["ended"] - cut["cut_at"])
        assert max(lags) < 1.0, f"slowest upstream close took {max(lags):.3f}s"
