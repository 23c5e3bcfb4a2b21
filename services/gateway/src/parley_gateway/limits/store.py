"""The Redis side of the limits: the scripts, explicit timeouts, and a breaker.

Calls made together are sent together (one write, one script per call). Every batch is bounded by
the command timeout (connect, handshake and reply), not counting time the gateway's own event loop was
busy elsewhere, so no request waits on a stalled Redis longer than that. A failed call starts a probe;
when the probe fails too, the breaker opens and requests go straight to the fallback policy until a
probe (every ``breaker_seconds``) succeeds.

A call that timed out may still run later, when a frozen Redis resumes. Admission scripts carry a
deadline in Redis's clock (estimated from earlier replies, set when the batch is sent) and do nothing
once it has passed, so a backlog replayed after a stall cannot consume limits on behalf of requests
that were answered by the fallback long ago.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import redis.asyncio as redis
from parley_common.logs import get_logger
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError

from parley_gateway.limits import lua

log = get_logger(__name__)
T = TypeVar("T")

SCRIPTS = {
    "admit": lua.ADMIT,
    "settle": lua.SETTLE,
    "renew": lua.RENEW,
    "peek": lua.PEEK,
    "window": lua.WINDOW,
    "publish_revision": lua.PUBLISH_REVISION,
}


MAX_BATCHES_IN_FLIGHT = 4
FIRE_DELAY = 0.02  # seconds a settlement may wait for an admission batch to ride along with
# Seconds a late timer may add to the timeout (see RedisStore._bounded): a sanity cap, far above the
# lag of a healthy process, so a burst that keeps the loop busy never passes for a Redis outage.
LAG_ALLOWANCE = 2.0
LAG_TICK = 0.025

# An argument the store replaces with the batch's deadline when it sends it (see _deadline_ms).
DEADLINE: Any = object()


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
            # The command timeout is enforced around each call (see _bounded); this is a backstop.
            socket_timeout=command_timeout * 4,
            retry=Retry(NoBackoff(), 0),  # a retry would double the wait; the fallback decides instead
            max_connections=max_connections,
            driver_info=None,  # no CLIENT SETINFO round trip on every new connection
        )
        # The batches' own connections (at most MAX_BATCHES_IN_FLIGHT): the command timeout is enforced
        # around each batch (_bounded), so they carry no socket timeout of their own, which in redis-py
        # costs a task per write and a timeout scope per reply.
        pool = self.client.connection_pool
        self._batch_connection_kwargs = {**pool.connection_kwargs, "socket_timeout": None}
        self._batch_connection_class = pool.connection_class
        self._idle_connections: list[AbstractConnection] = []
        self.timeout = command_timeout
        self.breaker_seconds = breaker_seconds
        self.sha = {name: hashlib.sha1(text.encode()).hexdigest() for name, text in SCRIPTS.items()}
        self._packed_keys: dict[tuple[str, ...], bytes] = {}  # a user's keys change once a day at most
        self._down = False
        self._queue: list[tuple[str, Sequence[str], Sequence[Any], asyncio.Future[Any]]] = []
        self._flush_scheduled = False
        self._flushes: set[asyncio.Task[None]] = set()
        self._fire_timer: asyncio.TimerHandle | None = None
        self._lag = 0.0  # seconds, in total, this loop ran timers late (see _measure_lag)
        self._lag_watcher: asyncio.Task[None] | None = None
        self._probe: asyncio.Task[None] | None = None
        self._offset_ms: float | None = None  # Redis clock - our clock
        self._offset_at = 0.0

    @property
    def available(self) -> bool:
        return not self._down

    def _deadline_ms(self) -> int:
        """When, in Redis's clock, this process stops waiting for a batch sent now (0: unknown)."""
        if self._offset_ms is None:
            return 0
        return int(time.time() * 1000 + self._offset_ms + 4 * self.timeout * 1000)

    def observe_clock(self, redis_now_ms: int) -> None:
        # A reply read late (a busy loop) understates the offset; the largest recent one is the truest.
        observed = redis_now_ms - time.time() * 1000
        now = time.monotonic()
        if self._offset_ms is None or observed > self._offset_ms or now - self._offset_at > 60:
            self._offset_ms, self._offset_at = observed, now

    async def load_scripts(self) -> None:
        for name, text in SCRIPTS.items():
            await self.client.script_load(text)
            log.debug("limits.script_loaded", script=name)

    async def warm_up(self) -> None:
        """Open the connections the batches will use, before traffic arrives."""
        connections = [self._batch_connection() for _ in range(MAX_BATCHES_IN_FLIGHT)]
        await asyncio.gather(*(c.connect() for c in connections if not c.is_connected))  # type: ignore[no-untyped-call]
        self._idle_connections.extend(connections)

    async def run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """One script; raises StoreUnavailable (and trips the breaker) when Redis fails or stalls."""
        if self._down:
            raise StoreUnavailable("breaker open")
        future = self._submit(name, keys, args)
        try:
            return await self._bounded(future)  # from now: queued behind stalled batches counts too
        except TimeoutError as exc:
            self.trip(exc)
            raise StoreUnavailable("timeout") from None

    def fire(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> None:
        """Queue a script nobody waits for (settlements, lease renewals); dropped while Redis is away.

        It travels with the next batch an admission sends, or on its own after ``FIRE_DELAY``: a
        settlement then costs no round trip of its own.
        """
        if self._down:
            log.debug("limits.call_dropped", script=name)
            return
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_consume)
        self._queue.append((name, keys, args, future))
        if not self._flush_scheduled and self._fire_timer is None:
            self._fire_timer = asyncio.get_running_loop().call_later(FIRE_DELAY, self._fire_due)

    def _fire_due(self) -> None:
        self._fire_timer = None
        if self._queue and not self._flush_scheduled:
            self._flush_scheduled = True
            self._start_flush()

    def _submit(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> asyncio.Future[Any]:
        # Calls made while the event loop is busy travel together: one pipeline, one round trip, each
        # call still one script. Under a burst this is what keeps replies well inside the timeout.
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((name, keys, args, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._start_flush)
        return future

    def _start_flush(self) -> None:
        self._flush_scheduled = False
        # A few batches in flight at most: their connections stay open and warm, where a burst that
        # opened new ones would pay connects (and their timeouts) on a busy loop.
        if not self._queue or len(self._flushes) >= MAX_BATCHES_IN_FLIGHT:
            return
        batch, self._queue = self._queue, []
        task = asyncio.get_running_loop().create_task(self._flush(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flush_done)

    def _flush_done(self, task: asyncio.Task[None]) -> None:
        self._flushes.discard(task)
        if self._queue and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._start_flush)

    async def _flush(
        self, batch: list[tuple[str, Sequence[str], Sequence[Any], asyncio.Future[Any]]]
    ) -> None:
        try:
            results = await self._bounded(self._execute(batch))
        except (TimeoutError, RedisError, OSError) as exc:
            self.trip(exc)
            for *_, future in batch:
                if not future.done():
                    future.set_exception(StoreUnavailable(type(exc).__name__))
            return
        for (*_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):  # a script error: a bug, not an outage; never trips
                log.error("limits.script_error", error=str(result)[:200])
                future.set_exception(StoreUnavailable("script error"))
            else:
                future.set_result(result)

    async def _bounded(self, work: Awaitable[T]) -> T:
        """``work`` within the command timeout, not counting time this event loop spent elsewhere.

        The timeout measures Redis, not this process: time the loop spent busy during the wait (a burst
        of requests to parse; measured by ``_measure_lag``) is given back to the reply, at most
        ``LAG_ALLOWANCE``. With an idle loop and a stalled Redis, the wait is the timeout itself.
        """
        loop = asyncio.get_running_loop()
        self._watch_lag()
        task = asyncio.ensure_future(work)
        budget, granted, lag_at_start = self.timeout, 0.0, self._lag
        while True:
            started = loop.time()
            done, _ = await asyncio.wait({task}, timeout=budget)
            if done:
                return task.result()
            late = loop.time() - started - budget
            stolen = max(self._lag - lag_at_start, late) - granted
            if stolen < 0.005 or granted + stolen > LAG_ALLOWANCE:
                task.cancel()
                raise TimeoutError("redis did not answer in time")
            budget, granted = stolen, granted + stolen

    def _watch_lag(self) -> None:
        if self._lag_watcher is None or self._lag_watcher.done():
            self._lag_watcher = asyncio.get_running_loop().create_task(self._measure_lag())

    async def _measure_lag(self) -> None:
        """Adds up how late this loop runs a short timer: time it spent busy, unable to read replies."""
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + LAG_TICK
            await asyncio.sleep(LAG_TICK)
            self._lag += max(0.0, loop.time() - expected)

    def _with_deadlines(self, args: Sequence[Any]) -> Sequence[Any]:
        if DEADLINE not in args:
            return args
        deadline = self._deadline_ms()
        return [deadline if a is DEADLINE else a for a in args]

    def _batch_connection(self) -> AbstractConnection:
        if self._idle_connections:
            return self._idle_connections.pop()
        return self._batch_connection_class(**self._batch_connection_kwargs)  # type: ignore[no-any-return]

    def _pack_evalsha(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> bytes:
        key = (name, *keys)
        head = self._packed_keys.get(key)  # the command, the script and the keys: the same every call
        if head is None:
            if len(self._packed_keys) >= 50_000:
                self._packed_keys.clear()  # rare; rebuilt on use
            head = _pack_items(("EVALSHA", self.sha[name], len(keys), *keys))
            self._packed_keys[key] = head
        return b"*%d\r\n%s%s" % (3 + len(keys) + len(args), head, _pack_items(args))

    async def _execute(
        self, batch: list[tuple[str, Sequence[str], Sequence[Any], asyncio.Future[Any]]]
    ) -> list[Any]:
        """Send the batch's scripts in one write and read their replies (a script's error as its result).

        The commands are packed here, not by redis-py's pipeline: its generic packing and bookkeeping
        cost as much CPU as the rest of an admission (``make bench``). Connecting, the handshake and
        reading replies stay redis-py's.
        """
        for attempt in (1, 2):
            packed = b"".join(
                self._pack_evalsha(name, keys, self._with_deadlines(args)) for name, keys, args, _ in batch
            )
            connection = self._batch_connection()
            try:
                await connection.send_packed_command(packed, check_health=False)
                results: list[Any] = []
                for _ in batch:
                    try:
                        results.append(await connection.read_response())
                    except ResponseError as exc:
                        results.append(exc)
            except BaseException:
                # Cancelled (the batch timed out) or failed: replies may still be on their way.
                await connection.disconnect(nowait=True)
                raise
            self._idle_connections.append(connection)
            if attempt == 1 and any(isinstance(r, NoScriptError) for r in results):
                await self.load_scripts()  # Redis restarted empty
                continue
            return results
        return results

    def trip(self, exc: BaseException) -> None:
        """A call failed: check Redis at once; only if that check fails too, open the breaker.

        One slow reply on a busy host is not an outage; opening the breaker for it would hand a burst
        of requests to the (less exact) local limits for nothing.
        """
        if self._probe is None or self._probe.done():
            log.warning("limits.redis_call_failed", error=type(exc).__name__)
            self._probe = asyncio.get_running_loop().create_task(self._probe_until_back())

    async def _probe_until_back(self) -> None:
        while True:
            try:
                await self._bounded(self.client.ping())
            except (TimeoutError, RedisError, OSError) as exc:
                if not self._down:
                    log.warning("limits.redis_unavailable", error=type(exc).__name__)
                self._down = True
                queued, self._queue = self._queue, []
                for *_, future in queued:
                    if not future.done():
                        future.set_exception(StoreUnavailable("breaker open"))
                await asyncio.sleep(self.breaker_seconds)
                continue
            if self._down:
                log.info("limits.redis_available")
            self._down = False
            return

    async def drain(self) -> None:
        """Wait for queued calls (settlements) to be sent, at shutdown."""
        if self._fire_timer is not None:
            self._fire_timer.cancel()
            self._fire_timer = None
        if self._queue:
            self._start_flush()
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)

    async def ping(self) -> None:
        await self._bounded(self.client.ping())

    async def close(self) -> None:
        for task in (self._probe, self._lag_watcher):
            if task is not None:
                task.cancel()
        for connection in self._idle_connections:
            await connection.disconnect()
        self._idle_connections.clear()
        await self.client.aclose()


def _pack_items(items: Sequence[Any]) -> bytes:
    """Bulk strings: bytes as they are; str, int and float as their text in UTF-8."""
    parts = []
    for item in items:
        kind = type(item)  # exact types: a bool (an int too) or anything else is a caller's mistake
        if kind is str:
            data = item.encode()
        elif kind is int:
            data = b"%d" % item
        elif kind is bytes:
            data = item
        elif kind is float:
            data = repr(item).encode()
        else:
            raise TypeError(f"cannot send {kind.__name__} to Redis")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.debug("limits.call_failed", error=type(future.exception()).__name__)
