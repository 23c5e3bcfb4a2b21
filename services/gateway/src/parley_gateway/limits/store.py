"""The Redis side of the limits: the scripts, explicit timeouts, and a breaker.

Every call is bounded by the command timeout as a whole (connect, handshake and reply), so no request
waits on a stalled Redis longer than that. After a failure the breaker sends requests straight to the
fallback policy and a probe checks Redis every ``breaker_seconds`` until it answers again.

A call that timed out may still run later, when a frozen Redis resumes. Admission scripts carry a
deadline in Redis's clock (estimated from earlier replies) and do nothing once it has passed, so a
backlog replayed after a stall cannot consume limits on behalf of requests that were answered by the
fallback long ago.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as redis
from parley_common.logs import get_logger
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from parley_gateway.limits import lua

log = get_logger(__name__)

SCRIPTS = {
    "admit": lua.ADMIT,
    "settle": lua.SETTLE,
    "renew": lua.RENEW,
    "peek": lua.PEEK,
    "window": lua.WINDOW,
    "publish_revision": lua.PUBLISH_REVISION,
}


class StoreUnavailable(Exception):
    """Redis did not answer in time (or refused); the caller applies its failure policy."""


class RedisStore:
    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float,
        command_timeout: float,
        breaker_seconds: float,
        max_connections: int = 512,
    ) -> None:
        self.client = redis.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout,
            socket_timeout=command_timeout,
            retry=Retry(NoBackoff(), 0),  # a retry would double the wait; the fallback decides instead
            max_connections=max_connections,
            driver_info=None,  # no CLIENT SETINFO round trip on every new connection
        )
        self.timeout = command_timeout
        self.breaker_seconds = breaker_seconds
        self.sha = {name: hashlib.sha1(text.encode()).hexdigest() for name, text in SCRIPTS.items()}
        self._down = False
        self._probe: asyncio.Task[None] | None = None
        self._offset_ms: float | None = None  # Redis clock - our clock, from the last reply

    @property
    def available(self) -> bool:
        return not self._down

    def deadline_ms(self) -> int:
        if self._offset_ms is None:
            return 0
        return int(time.time() * 1000 + self._offset_ms + self.timeout * 1000)

    def observe_clock(self, redis_now_ms: int) -> None:
        self._offset_ms = redis_now_ms - time.time() * 1000

    async def load_scripts(self) -> None:
        for name, text in SCRIPTS.items():
            await self.client.script_load(text)
            log.debug("limits.script_loaded", script=name)

    async def run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """One script, bounded by the timeout; raises StoreUnavailable and trips the breaker on failure."""
        if self._down:
            raise StoreUnavailable("breaker open")
        try:
            async with asyncio.timeout(self.timeout):
                try:
                    return await self.client.evalsha(self.sha[name], len(keys), *keys, *args)
                except NoScriptError:  # Redis restarted empty: load and run once more
                    await self.client.script_load(SCRIPTS[name])
                    return await self.client.evalsha(self.sha[name], len(keys), *keys, *args)
        except (TimeoutError, RedisError, OSError) as exc:
            self.trip(exc)
            raise StoreUnavailable(type(exc).__name__) from None

    async def run_many(self, calls: Sequence[tuple[str, Sequence[str], Sequence[Any]]]) -> list[Any]:
        """Several scripts in one pipeline (settlements, lease renewals); one round trip."""
        if self._down:
            raise StoreUnavailable("breaker open")
        try:
            async with asyncio.timeout(self.timeout):
                for attempt in (1, 2):
                    pipe = self.client.pipeline(transaction=False)
                    for name, keys, args in calls:
                        pipe.evalsha(self.sha[name], len(keys), *keys, *args)
                    results: list[Any] = await pipe.execute(raise_on_error=False)
                    if attempt == 1 and any(isinstance(r, NoScriptError) for r in results):
                        await self.load_scripts()
                        continue
                    return results
        except (TimeoutError, RedisError, OSError) as exc:
            self.trip(exc)
            raise StoreUnavailable(type(exc).__name__) from None
        return []

    def trip(self, exc: BaseException) -> None:
        if not self._down:
            log.warning("limits.redis_unavailable", error=type(exc).__name__)
        self._down = True
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._wait_until_back())

    async def _wait_until_back(self) -> None:
        while True:
            await asyncio.sleep(self.breaker_seconds)
            try:
                async with asyncio.timeout(self.timeout):
                    await self.client.ping()
            except (TimeoutError, RedisError, OSError):
                continue
            self._down = False
            log.info("limits.redis_available")
            return

    async def ping(self) -> None:
        async with asyncio.timeout(self.timeout):
            await self.client.ping()

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        await self.client.aclose()
