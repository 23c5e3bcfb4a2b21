"""What documents (RAG) cost chat: CPU to store a document, and CPU a turn with retrieval adds.

- ``upload``: documents of several sizes, one at a time; chat's CPU per 1,000 words (chunking, embedding,
  the insert of every chunk's vector) and each upload's latency.
- ``plain_turn`` and ``retrieval_turn``: conversation turns (a new conversation each, fake provider with
  no delay), without and with ``"documents": "all"`` over the same user's ten documents. The difference is
  what retrieval adds: the question's embedding and the exact pgvector search over the user's chunks.

CPU is chat's own CPU time over a run divided by its requests (the client and the provider never count).
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
from parley_common.auth.keys import generate_private_key_pem, load_signing_keys
from parley_common.testing.processes import ManagedProcess

from bench.context import BenchContext, cpu_seconds, start_provider_and_chat

TURNS = 100
CONCURRENCY = 4
DOCUMENTS = 10
SIZES = (1_000, 5_000, 15_000)  # words
TOPICS = ["trams", "bread", "tides", "violins", "glaciers", "chess", "bees", "ferries", "ink", "comets"]


def _text(topic: str, words: int) -> str:
    sentence = f"Notes on {topic}: how {topic} work, where {topic} are found and why people study {topic}."
    out: list[str] = []
    while len(out) < words:
        out.extend(sentence.split())
    return " ".join(out[:words])


async def _uploads(http: httpx.AsyncClient, chat: ManagedProcess) -> dict[str, Any]:
    results = {}
    for words in SIZES:
        before, started = cpu_seconds(chat), time.perf_counter()
        response = await http.post(
            "/v1/documents", json={"title": f"{words} words", "content": _text("maps", words)}
        )
        response.raise_for_status()
        results[str(words)] = {
            "seconds": round(time.perf_counter() - started, 3),
            "chat_cpu_ms_per_1000_words": round((cpu_seconds(chat) - before) * 1000 / (words / 1000), 1),
            "chunks": response.json()["chunk_count"],
        }
    return results


async def _turns(http: httpx.AsyncClient, chat: ManagedProcess, extra: dict[str, Any]) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    sources: Counter[int] = Counter()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(TURNS):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            started = time.perf_counter()
            conversation = (await http.post("/v1/conversations", json={})).json()["id"]
            response = await http.post(
                f"/v1/conversations/{conversation}/messages",
                json={
                    "content": f"Why do people study {TOPICS[i % len(TOPICS)]}?",
                    "max_tokens": 16,
                    **extra,
                },
            )
            latencies.append((time.perf_counter() - started) * 1000)
            statuses[str(response.status_code)] += 1
            if response.status_code == 201:
                sources[len(response.json()["sources"])] += 1

    before = cpu_seconds(chat)
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    spent = cpu_seconds(chat) - before
    latencies.sort()
    return {
        "turns": TURNS,
        "chat_cpu_ms_per_turn": round(spent * 1000 / TURNS, 3),
        "p50_ms": round(statistics.median(latencies), 2),
        "statuses": dict(statuses),
        "sources_per_turn": {str(k): v for k, v in sorted(sources.items())},
    }


def run(ctx: BenchContext) -> dict[str, Any]:
    key = load_signing_keys(generate_private_key_pem())[0]
    chat, chat_url = start_provider_and_chat(ctx, ctx.service_env(key))
    plan = PlanClaims(
        name="pro", default_model="gpt-4o-mini", rag_max_documents=100, rag_max_document_bytes=500_000
    )
    token = mint_internal_token(key, InternalIdentity(user_id=uuid.uuid4(), plan=plan), ttl=3600)

    async def scenario() -> dict[str, Any]:
        async with httpx.AsyncClient(
            base_url=chat_url, headers={"authorization": f"Bearer {token}"}, timeout=120
        ) as http:
            # Warm-up: the model loads on first use (about a second), not in a measured run.
            (
                await http.post("/v1/documents", json={"title": "warm", "content": "warm up"})
            ).raise_for_status()
            uploads = await _uploads(http, chat)
            for topic in TOPICS[:DOCUMENTS]:
                document = {"title": topic, "content": _text(topic, 1_500)}
                (await http.post("/v1/documents", json=document)).raise_for_status()
            listed = (await http.get("/v1/documents", params={"limit": 100})).json()["data"]
            plain = await _turns(http, chat, {})
            retrieval = await _turns(http, chat, {"documents": "all"})
            return {
                "upload": uploads,
                "user_chunks": sum(d["chunk_count"] for d in listed),
                "plain_turn": plain,
                "retrieval_turn": retrieval,
            }

    runs = asyncio.run(scenario())
    ctx.notes.append(
        "retrieval_turn minus plain_turn is what retrieval adds to a turn: the question's embedding and "
        f"the exact search over the user's {runs['user_chunks']} chunks."
    )
    return {
        "runs": runs,
        "summary": {
            "upload_cpu_ms_per_1000_words": {
                words: r["chat_cpu_ms_per_1000_words"] for words, r in runs["upload"].items()
            },
            "turn_cpu_ms": {
                "plain": runs["plain_turn"]["chat_cpu_ms_per_turn"],
                "retrieval": runs["retrieval_turn"]["chat_cpu_ms_per_turn"],
            },
            "retrieval_extra_ms": round(
                runs["retrieval_turn"]["chat_cpu_ms_per_turn"] - runs["plain_turn"]["chat_cpu_ms_per_turn"], 3
            ),
            "p50_ms": {"plain": runs["plain_turn"]["p50_ms"], "retrieval": runs["retrieval_turn"]["p50_ms"]},
        },
    }
