"""The gateway's HTTP/1.1 client to the services behind it: pooled keep-alive connections on asyncio
protocols, replies parsed by httptools (llhttp, the parser uvicorn uses).

Why not aiohttp's client: on the bench machine it cost about half a millisecond of CPU per forwarded
request, most of the gateway's budget, where this client costs a fraction of that (``make bench``
runs both: ``bench/bare_forwarder.py`` forwards with aiohttp). The services are ours and speak plain
HTTP/1.1, so the client does only what forwarding needs:

- one request at a time per connection; a connection goes back to the pool when its reply has been
  read to the end and the service keeps it alive, and is dropped after ``idle_timeout`` unused (below
  the services' keep-alive, so the pool seldom picks a connection the service is closing);
- a request on a reused connection that the service closed before answering a byte is sent once more
  on a new connection, when repeating it is safe: an idempotent method only (no service of ours
  deduplicates by ``Idempotency-Key``, so a POST that the service ran before dying could run twice);
- a connect timeout (waiting for a free connection counts), and a read timeout between bytes while the
  gateway waits for the reply;
- body bytes handed over as they arrive, with reading paused while more than ``HIGH_WATER`` bytes wait
  for a slow client.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httptools

HIGH_WATER = 256 * 1024
_REPLAYABLE_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


class UpstreamError(Exception):
    """The service could not be reached, or broke off its reply."""


class UpstreamTimeout(UpstreamError):
    """No connection, or no byte of the reply, within the timeout."""


class Headers:
    """A reply's headers: names lower-cased, in order, repeats kept."""

    __slots__ = ("_items",)

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items

    def get(self, name: str, default: str | None = None) -> str | None:
        for key, value in self._items:
            if key == name:
                return value
        return default

    def items(self) -> list[tuple[str, str]]:
        return self._items


class _Connection(asyncio.Protocol):
    """One keep-alive connection; carries one exchange at a time."""

    def __init__(self, origin: _Origin, loop: asyncio.AbstractEventLoop, read_timeout: float) -> None:
        self.origin = origin
        self.loop = loop
        self.read_timeout = read_timeout
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.exchanges = 0
        self.idle_since = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._begin(head_request=False)

    def _begin(self, *, head_request: bool) -> None:
        self.head_request = head_request
        self.status = 0
        self.header_items: list[tuple[str, str]] = []
        self.has_head = False
        self.body: list[bytes] = []
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.error: UpstreamError | None = None
        self.received_any = False
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None
        self.waiting_since = 0.0
        self.delimited = True  # by Content-Length or chunked framing, not by the end of the connection
        self._informational = False

    # -- the exchange -----------------------------------------------------------------------------

    def send(self, request: bytes, *, head_request: bool) -> None:
        assert self.transport is not None
        self._begin(head_request=head_request)
        self.exchanges += 1
        self.transport.write(request)

    async def wait(self) -> None:
        """Until the reply has news (bytes, its end, or a failure); UpstreamTimeout without bytes for
        ``read_timeout``."""
        self.waiter = self.loop.create_future()
        self.waiting_since = self.loop.time()
        if self._timer is None:
            self._timer = self.loop.call_at(self.waiting_since + self.read_timeout, self._on_timer)
        await self.waiter

    def _on_timer(self) -> None:
        # One lazy timer per connection instead of one per wait: it fires at the earliest possible
        # deadline and looks again whether bytes came in meanwhile.
        self._timer = None
        if self.waiter is None or self.waiter.done():
            return
        due = self.waiting_since + self.read_timeout
        if self.loop.time() < due:
            self._timer = self.loop.call_at(due, self._on_timer)
            return
        self._fail(UpstreamTimeout("the service sent nothing within the read timeout"))
        self.abort()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            self.waiter = None
            waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None and not self.complete:
            self.error = error
        self._wake()

    def abort(self) -> None:
        """Drop the connection (and with it whatever the service was still sending) and its pool slot."""
        self.closed = True
        self._stop_timer()
        self.origin.forget(self)
        if self.transport is not None:
            self.transport.abort()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):  # garbage, or a protocol switch
            self._fail(UpstreamError("the service sent a malformed reply"))
            self.abort()
            return
        if self.body or self.complete or self.has_head:
            self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_timer()
        self.origin.forget(self)
        if self.has_head and not self.delimited and not self.complete:
            self.complete = True  # a reply that ends with its connection has ended
            self._wake()
        if not self.complete:
            self._fail(UpstreamError("the service closed the connection before the reply ended"))

    # -- httptools callbacks ---------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_items.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # "100 Continue" and the like precede the real reply
            self._informational = True
            self.header_items = []
            return
        self.status = status
        self.has_head = True
        self.delimited = any(name in ("content-length", "transfer-encoding") for name, _ in self.header_items)
        if self.head_request:  # a reply to HEAD has no body, whatever its Content-Length says
            self.complete = True
            self.keep_alive = False

    def on_body(self, body: bytes) -> None:
        if self.head_request:
            return
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if not self.complete:
            self.complete = True
            self.keep_alive = self.parser.should_keep_alive()
        self._stop_timer()


class UpstreamResponse:
    """A service's reply: status and headers at once, the body through ``receive()`` or ``read()``.

    The caller ends it with ``release()`` (the connection may serve again if the body was read to the
    end) or ``close()`` (the connection is dropped: a stream the client left, a failure).
    """

    __slots__ = ("_conn", "_done", "headers", "status")

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._done = False
        self.status = conn.status
        self.headers = Headers(conn.header_items)

    async def receive(self) -> bytes:
        """The body bytes that arrived since the last call, waiting for some; ``b""`` at the end."""
        conn = self._conn
        while True:
            if conn.body:
                data = conn.body[0] if len(conn.body) == 1 else b"".join(conn.body)
                conn.body = []
                conn.buffered = 0
                if conn.paused and conn.transport is not None:
                    conn.paused = False
                    conn.transport.resume_reading()
                return data
            if conn.error is not None:
                raise conn.error
            if conn.complete:
                return b""
            await conn.wait()

    async def read(self) -> bytes:
        chunks = []
        while data := await self.receive():
            chunks.append(data)
        return b"".join(chunks)

    @property
    def at_eof(self) -> bool:
        return self._conn.complete and not self._conn.body

    def release(self) -> None:
        if self._done:
            return
        self._done = True
        conn = self._conn
        if conn.complete and conn.keep_alive and not conn.body and not conn.closed:
            conn.origin.put_back(conn)
        else:
            conn.abort()

    def close(self) -> None:
        if self._done:
            return
        self._done = True
        self._conn.abort()


@dataclass(eq=False)
class _Origin:
    """The pool of one service (scheme, host and port)."""

    host: str
    port: int
    ssl: ssl.SSLContext | None
    host_header: bytes
    pool: Upstream
    idle: deque[_Connection] = field(default_factory=deque)

    def put_back(self, conn: _Connection) -> None:
        conn.idle_since = conn.loop.time()
        if not self.pool.hand_over(conn):
            self.idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        if conn in self.pool.connections:
            self.pool.connections.discard(conn)
            self.pool.slot_freed()
        try:
            self.idle.remove(conn)
        except ValueError:
            pass


class Upstream:
    """Pooled connections to the services; at most ``max_connections`` open together."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int,
        idle_timeout: float = 30.0,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.connections: set[_Connection] = set()
        self._origins: dict[tuple[str, str, int], _Origin] = {}
        self._bases: dict[str, tuple[_Origin, bytes]] = {}  # base URL: its origin, its path prefix
        self._opening = 0
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self._ssl: ssl.SSLContext | None = None

    async def send(
        self,
        method: str,
        base_url: str,
        path: bytes,
        query: bytes,
        headers: Mapping[str, str],
        body: bytes | None,
    ) -> UpstreamResponse:
        """Send one request; the reply once its status and headers are in.

        ``path`` and ``query`` are the raw (still percent-encoded) bytes of the client's request.
        Raises UpstreamTimeout or UpstreamError.
        """
        origin, prefix = self._bases.get(base_url) or self._base(base_url)
        request = _request_bytes(method, origin, prefix + path, query, headers, body)
        replayable = method in _REPLAYABLE_METHODS
        head_request = method == "HEAD"
        while True:
            conn = await self._acquire(origin)
            reused = conn.exchanges > 0
            try:
                conn.send(request, head_request=head_request)
                while not conn.has_head and conn.error is None:
                    await conn.wait()
            except BaseException:  # cancelled (the client left): the exchange cannot be finished
                conn.abort()
                raise
            if conn.error is None:
                return UpstreamResponse(conn)
            error = conn.error
            conn.abort()
            if reused and replayable and not conn.received_any and not isinstance(error, UpstreamTimeout):
                continue  # the service had closed this idle connection: nothing reached it
            raise error

    def _base(self, base_url: str) -> tuple[_Origin, bytes]:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        tls = parts.scheme == "https"
        if tls and self._ssl is None:
            self._ssl = ssl.create_default_context()
        port = parts.port or (443 if tls else 80)
        key = (parts.scheme, parts.hostname, port)
        if key in self._origins:
            self._bases[base_url] = (self._origins[key], parts.path.rstrip("/").encode())
            return self._bases[base_url]
        default_port = port == (443 if tls else 80)
        host_header = parts.hostname if default_port else f"{parts.hostname}:{port}"
        origin = _Origin(
            host=parts.hostname,
            port=port,
            ssl=self._ssl if tls else None,
            host_header=host_header.encode("idna"),
            pool=self,
        )
        self._origins[key] = origin
        self._bases[base_url] = (origin, parts.path.rstrip("/").encode())
        return self._bases[base_url]

    async def _acquire(self, origin: _Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        idle = origin.idle
        now = loop.time()
        while idle:
            conn = idle.pop()  # the most recently used: the likeliest to be alive
            if not conn.closed and now - conn.idle_since < self.idle_timeout:
                self._drop_expired(origin, now)
                return conn
            conn.abort()
        if len(self.connections) + self._opening >= self.max_connections:
            handed = await self._wait_for_slot(loop)
            if handed is not None and handed.origin is origin:
                return handed
            if handed is not None:  # a connection to another service came free: its slot is ours
                self.connections.discard(handed)
                handed.abort()
        return await self._connect(origin, loop)

    def _drop_expired(self, origin: _Origin, now: float) -> None:
        idle = origin.idle
        while idle and now - idle[0].idle_since >= self.idle_timeout:
            conn = idle.popleft()
            conn.abort()

    async def _wait_for_slot(self, loop: asyncio.AbstractEventLoop) -> _Connection | None:
        waiter: asyncio.Future[_Connection | None] = loop.create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.connect_timeout):
                return await waiter
        except TimeoutError:
            raise UpstreamTimeout("no connection to the service came free in time") from None
        finally:
            if not waiter.done():
                waiter.cancel()
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def hand_over(self, conn: _Connection) -> bool:
        """Give a freed connection straight to a request waiting for one."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    def slot_freed(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _connect(self, origin: _Origin, loop: asyncio.AbstractEventLoop) -> _Connection:
        self._opening += 1
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(origin, loop, self.read_timeout),
                    origin.host,
                    origin.port,
                    ssl=origin.ssl,
                )
        except TimeoutError:
            raise UpstreamTimeout("the service did not accept a connection in time") from None
        except OSError as exc:
            raise UpstreamError(f"cannot connect to the service: {exc.strerror or exc}") from None
        finally:
            self._opening -= 1
        self.connections.add(conn)
        return conn

    async def close(self) -> None:
        for conn in list(self.connections):
            conn.abort()
        self.connections.clear()
        for origin in self._origins.values():
            origin.idle.clear()
        await asyncio.sleep(0)  # let the transports finish closing


def _request_bytes(
    method: str, origin: _Origin, path: bytes, query: bytes, headers: Mapping[str, str], body: bytes | None
) -> bytes:
    target = path + (b"?" + query if query else b"")
    lines = [b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (method.encode("ascii"), target, origin.host_header)]
    for name, value in headers.items():
        if "\r" in value or "\n" in value:  # never let a header value start another header
            raise ValueError(f"header {name!r} has a line break")
        lines.append(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
    if body:
        lines.append(b"content-length: %d\r\n\r\n" % len(body))
        lines.append(body)
    else:
        lines.append(b"content-length: 0\r\n\r\n" if method in ("POST", "PUT", "PATCH") else b"\r\n")
    return b"".join(lines)
