"""Exact response cache in Redis, scoped to one user, failing open.

The key is ``<prefix>chat:cache:v1:<user id>:<sha256>`` where the digest covers the model that answers,
the normalised messages and every parameter that changes the output. The user id is part of the key
itself, not only of the digest, so no lookup can ever reach another tenant's entries and one user's
entries can be found (and purged) by prefix.

Redis is an optimisation here, never a dependency: every call has a hard deadline, any failure is a miss,
and after a failure the cache is skipped for a short pause so an outage costs requests nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import unicodedata
from typing import Any
from uuid import UUID

from parley_common.logs import get_logger
from prometheus_client import Counter
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from parley_chat.schemas import NOT_OUTPUT_CHANGING

log = get_logger(__name__)

CACHE_LOOKUPS = Counter(
    "parley_chat_cache_lookups_total", "Response cache lookups", ["result"]
)  # hit | miss | error | skipped


def _normal_text(text: str) -> str:
    return unicodedata.normalize("NFC", text).strip()


def _normal_content(content: Any) -> Any:
    if isinstance(content, str):
        return _normal_text(content)
    if isinstance(content, list):
        parts = [
            {**part, "text": _normal_text(part["text"])}
            if isinstance(part, dict) and isinstance(part.get("text"), str)
            else part
            for part in content
        ]
        # [{"type": "text", "text": "hi"}] and "hi" are the same prompt.
        if len(parts) == 1 and isinstance(parts[0], dict) and parts[0].get("type") == "text":
            return parts[0].get("text", "")
        return parts
    return content


def normalise_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with text in NFC, trimmed, and single text parts flattened (key order is fixed later)."""
    return [
        {k: (_normal_content(v) if k == "content" else v) for k, v in m.items() if v is not None}
        for m in messages
    ]


def user_cache_prefix(prefix: str, user_id: UUID) -> str:
    """Where every cached answer of one user starts (what erasing the user removes)."""
    return f"{prefix}chat:cache:v1:{user_id}:"


def cache_key(
    prefix: str, user_id: UUID, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
) -> str:
    material = {
        "user": str(user_id),
        "model": model,
        "messages": normalise_messages(messages),
        "params": {k: v for k, v in params.items() if k not in NOT_OUTPUT_CHANGING and v is not None},
    }
    digest = hashlib.sha256(
        json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()
    return user_cache_prefix(prefix, user_id) + digest


class ResponseCache:
    def __init__(
        self,
        url: str,
        *,
        ttl: int,
        max_bytes: int,
        connect_timeout: float,
        command_timeout: float,
        pause_after_error: float,
    ) -> None:
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.deadline = connect_timeout + command_timeout
        self.pause_after_error = pause_after_error
        self._paused_until = 0.0
        self.redis = Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout,
            socket_timeout=command_timeout,
            # redis-py retries failed commands by default, which would multiply the wait during an outage.
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )

    def available(self) -> bool:
        return time.monotonic() >= self._paused_until

    def failed(self, operation: str, exc: BaseException) -> None:
        self._paused_until = time.monotonic() + self.pause_after_error
        if operation == "get":
            CACHE_LOOKUPS.labels("error").inc()
        log.warning("cache.unavailable", operation=operation, error=type(exc).__name__)

    async def get(self, key: str) -> dict[str, Any] | None:
        if not self.available():
            CACHE_LOOKUPS.labels("skipped").inc()
            return None
        try:
            async with asyncio.timeout(self.deadline):
                raw = await self.redis.get(key)
        except Exception as exc:  # noqa: BLE001 - fail open: any Redis problem is a miss
            self.failed("get", exc)
            return None
        if raw is None:
            CACHE_LOOKUPS.labels("miss").inc()
            return None
        try:
            value: dict[str, Any] = json.loads(raw)
        except ValueError:
            CACHE_LOOKUPS.labels("miss").inc()
            return None
        CACHE_LOOKUPS.labels("hit").inc()
        return value

    async def set(self, key: str, value: dict[str, Any]) -> bool:
        """Whether the value was stored (too large, or Redis away: not, and that is no error)."""
        data = json.dumps(value, separators=(",", ":")).encode()
        if len(data) > self.max_bytes or not self.available():
            return False
        try:
            async with asyncio.timeout(self.deadline):
                await self.redis.set(key, data, ex=self.ttl)
        except Exception as exc:  # noqa: BLE001 - fail open: a failed write only costs a future miss
            self.failed("set", exc)
            return False
        return True

    async def close(self) -> None:
        try:
            await self.redis.aclose()
        except Exception as exc:  # noqa: BLE001 - closing a connection to a dead server
            log.info("cache.close_failed", error=type(exc).__name__)
