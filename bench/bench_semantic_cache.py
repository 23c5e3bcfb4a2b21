"""What the semantic cache costs and saves: chat's CPU and latency per request, straight to chat.

Four runs of deterministic requests (``temperature: 0``) on the fake provider (no delay), each with its own
user so no run sees another's entries:

- ``exact_miss``: an exact-cache plan, every question new (the provider answers each);
- ``semantic_miss``: a semantic plan, every question new (exact miss, embedding, partition scored, the
  provider answers, answer and vector stored): the extra over ``exact_miss`` is the semantic cache's cost;
- ``semantic_hit``: a semantic plan, rewordings of one answered question (exact miss, embedding, match);
- ``exact_hit``: an exact-cache plan, one question repeated.

CPU per request is chat's own CPU time over a run divided by its requests (the client and the provider
never count). The statuses seen (``x-parley-cache``) are kept with each run, so a run that did not do what
its name says shows it.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections import Counter
from typing import Any

import httpx
from parley_common.auth.internal import InternalIdentity, PlanClaims, mint_internal_token
from parley_common.auth.keys import SigningKey, generate_private_key_pem, load_signing_keys
from parley_common.testing.processes import ManagedProcess

from bench.context import BenchContext, cpu_seconds, start_provider_and_chat

REQUESTS = 300
CONCURRENCY = 8
SEED = "What is the capital of France?"
REWORDINGS = [
    "Tell me the capital of France.",
    "What's the capital city of France?",
    "What is the capital of France!",
    "what is the capital of france",
    "Which city is the capital of France?",
]


def _token(key: SigningKey, cache: str) -> str:
    plan = PlanClaims(name="pro", default_model="gpt-4o-mini", cache=cache)  # type: ignore[arg-type]
    return mint_internal_token(key, InternalIdentity(user_id=uuid.uuid4(), plan=plan), ttl=3600)


async def _run(chat_url: str, token: str, questions: list[str], chat: ManagedProcess) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    queue: asyncio.Queue[str] = asyncio.Queue()
    for question in questions:
        queue.put_nowait(question)
    async with httpx.AsyncClient(
        base_url=chat_url, headers={"authorization": f"Bearer {token}"}, timeout=30
    ) as client:

        async def worker() -> None:
            while not queue.empty():
                question = queue.get_nowait()
                started = time.perf_counter()
                response = await client.post(
                    "/v1/chat/completions",
                    json={
                        "model": "gpt-4o-mini",
                        "messages": [{"role": "user", "content": question}],
                        "temperature": 0,
                        "max_tokens": 16,
                    },
                )
                latencies.append((time.perf_counter() - started) * 1000)
                statuses[f"{response.status_code} {response.headers.get('x-parley-cache')}"] += 1

        before = cpu_seconds(chat)
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        spent = cpu_seconds(chat) - before
    latencies.sort()
    return {
        "requests": len(questions),
        "chat_cpu_ms_per_request": round(spent * 1000 / len(questions), 3),
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 2),
        "statuses": dict(statuses),
    }


def run(ctx: BenchContext) -> dict[str, Any]:
    pem = generate_private_key_pem()
    key = load_signing_keys(pem)[0]
    chat, chat_url = start_provider_and_chat(ctx, ctx.service_env(key))
    fresh = [f"Question {i}: what is a good name for a {i}-legged robot?" for i in range(REQUESTS)]

    async def scenario() -> dict[str, Any]:
        # Warm-up: the model loads on the first semantic request (about a second), not in a measured run.
        await _run(chat_url, _token(key, "semantic"), [SEED, *REWORDINGS], chat)
        runs = {"exact_miss": await _run(chat_url, _token(key, "exact"), fresh, chat)}
        runs["semantic_miss"] = await _run(chat_url, _token(key, "semantic"), fresh, chat)
        semantic = _token(key, "semantic")
        await _run(chat_url, semantic, [SEED], chat)
        runs["semantic_hit"] = await _run(
            chat_url, semantic, [REWORDINGS[i % len(REWORDINGS)] for i in range(REQUESTS)], chat
        )
        exact = _token(key, "exact")
        await _run(chat_url, exact, [SEED], chat)
        runs["exact_hit"] = await _run(chat_url, exact, [SEED] * REQUESTS, chat)
        return runs

    runs = asyncio.run(scenario())
    cpu = {name: r["chat_cpu_ms_per_request"] for name, r in runs.items()}
    ctx.notes.append(
        "chat_cpu_ms_per_request is chat's CPU time over a run divided by its requests; semantic_miss minus "
        "exact_miss is what the semantic cache adds to a question it cannot answer."
    )
    return {
        "requests_per_run": REQUESTS,
        "concurrency": CONCURRENCY,
        "runs": runs,
        "summary": {
            "chat_cpu_ms_per_request": cpu,
            "semantic_miss_extra_ms": round(cpu["semantic_miss"] - cpu["exact_miss"], 3),
            "p50_ms": {name: r["p50_ms"] for name, r in runs.items()},
        },
    }
