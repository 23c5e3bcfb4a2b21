"""The gateway's HTTP client (parley_gateway.upstream) against real HTTP servers on loopback.

Each server here is a small asyncio server written for one behaviour (keep-alive, chunks, a service that
closes idle connections, one that never answers, …), so every path of the client runs over real sockets.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from parley_gateway.upstream import HIGH_WATER, Upstream, UpstreamError, UpstreamTimeout

from tests.support.tls import make_tls_files

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[object]]


class Server:
    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0


@asynccontextmanager
async def serve(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    """A loopback server calling ``handler(reader, writer, connection_number)`` per connection."""
    state = Server()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        try:
            await handler(reader, writer, state.connections)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=tls)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()


async def read_request(reader: asyncio.StreamReader, state: Server) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length) if length else b""
    state.requests.append(head + body)
    return head + body


def reply(body: bytes, *, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (
        len(body),
        extra,
        body,
    )


def keep_answering(body: bytes, state_ref: list[Server]) -> Handler:
    """A keep-alive service: every request on a connection recorded (in ``state_ref[0]``) and answered."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while True:
            await read_request(reader, state_ref[0])
            writer.write(reply(body))
            await writer.drain()

    return handler


def client(**overrides: float) -> Upstream:
    options = {"connect_timeout": 2.0, "read_timeout": 5.0, "max_connections": 10, **overrides}
    return Upstream(
        connect_timeout=options["connect_timeout"],
        read_timeout=options["read_timeout"],
        max_connections=int(options["max_connections"]),
    )


async def get(
    upstream: Upstream,
    port: int,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> bytes:
    response = await upstream.send(method, f"http://127.0.0.1:{port}", b"/x", b"", headers or {}, body)
    content = await response.read()
    response.release()
    return content


async def test_keep_alive_reuses_one_connection_and_sends_the_request_as_given() -> None:
    state_ref: list[Server] = []
    async with serve(keep_answering(b'{"ok":true}', state_ref)) as state:
        state_ref.append(state)
        upstream = client()
        response = await upstream.send(
            "POST",
            f"http://127.0.0.1:{state.port}/base/",
            b"/v1/a%2Fb",
            b"q=1",
            {"content-type": "application/json", "authorization": "Bearer t"},
            b'{"a":1}',
        )
        assert response.status == 200
        assert response.headers.get("content-type") == "application/json"
        assert await response.read() == b'{"ok":true}'
        response.release()
        assert await get(upstream, state.port) == b'{"ok":true}'
        await upstream.close()
    assert state.connections == 1
    first = state.requests[0]
    assert first.startswith(b"POST /base/v1/a%2Fb?q=1 HTTP/1.1\r\nhost: 127.0.0.1:")
    assert b"authorization: Bearer t\r\n" in first
    assert b"content-length: 7\r\n" in first
    assert first.endswith(b'\r\n\r\n{"a":1}')


async def test_a_chunked_reply_arrives_piece_by_piece_as_the_service_sends_it() -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        writer.write(b"7\r\ndata: 1\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"7\r\ndata: 2\r\n0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with serve(handler) as state:
        upstream = client()
        response = await upstream.send("POST", f"http://127.0.0.1:{state.port}", b"/s", b"", {}, b"{}")
        assert await response.receive() == b"data: 1"
        assert not response.at_eof
        release.set()
        assert await response.receive() == b"data: 2"
        assert await response.receive() == b""
        response.release()
        assert len(upstream.connections) == 1  # kept for the next request
        await upstream.close()


async def test_replies_ended_by_close_or_connection_close_are_read_whole_and_never_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if number == 1:  # no length, no chunks: the body ends with the connection
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end")
        else:
            writer.write(reply(b"bye", extra=b"connection: close\r\n"))
        await writer.drain()

    async with serve(handler) as state:
        upstream = client()
        assert await get(upstream, state.port) == b"until the end"
        assert await get(upstream, state.port) == b"bye"
        assert await get(upstream, state.port) == b"bye"
        await upstream.close()
    assert state.connections == 3


async def test_a_service_that_never_answers_times_out_after_the_read_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.read()  # reads, never answers

    async with serve(handler) as state:
        upstream = client(read_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            await get(upstream, state.port)
        assert 0.25 < time.monotonic() - started < 2.0
        assert not upstream.connections  # the connection was dropped, not pooled
        await upstream.close()


async def test_a_stream_that_goes_quiet_mid_body_times_out_but_steady_bytes_do_not() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(6):  # 0.6 s of bytes every 0.1 s: longer than the timeout in total
            writer.write(b"1\r\n.\r\n")
            await writer.drain()
            await asyncio.sleep(0.1)
        await reader.read()  # then silence

    async with serve(handler) as state:
        upstream = client(read_timeout=0.35)
        response = await upstream.send("GET", f"http://127.0.0.1:{state.port}", b"/", b"", {}, None)
        received = b""

        async def read_all() -> None:
            nonlocal received
            while data := await response.receive():
                received += data

        with pytest.raises(UpstreamTimeout):
            await read_all()
        assert received == b"." * 6
        response.close()
        await upstream.close()


async def test_nothing_listening_is_an_upstream_error() -> None:
    async with serve(lambda r, w, n: asyncio.sleep(0)) as state:
        port = state.port
    upstream = client()
    with pytest.raises(UpstreamError) as raised:
        await get(upstream, port)
    assert not isinstance(raised.value, UpstreamTimeout)
    await upstream.close()


async def test_a_request_the_service_dropped_unanswered_is_repeated_only_when_that_is_safe() -> None:
    """Connection 1 answers once, then closes on the next request without a byte; later ones answer."""
    state_ref: list[Server] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await read_request(reader, state_ref[0])
        writer.write(reply(b"first" if number == 1 else b"again"))
        await writer.drain()
        if number == 1:
            await read_request(reader, state_ref[0])
            return  # closes without answering, as a service closing an idle connection does
        await reader.read()

    for method, headers, outcome in (
        ("GET", {}, b"again"),
        ("DELETE", {}, b"again"),
        ("POST", {}, None),
        # No service deduplicates by key: the gateway must not assume one does.
        ("POST", {"idempotency-key": "k1"}, None),
    ):
        async with serve(handler) as state:
            state_ref[:] = [state]
            upstream = client()
            assert await get(upstream, state.port) == b"first"
            if outcome is None:  # repeating a POST could run it twice: refused, the caller sees a 502
                with pytest.raises(UpstreamError):
                    await get(upstream, state.port, method=method, headers=headers, body=b"{}")
                assert len(state.requests) == 2
            else:
                assert await get(upstream, state.port, method=method, headers=headers, body=b"{}") == outcome
                assert len(state.requests) == 3  # the dropped one, then the repeat
            await upstream.close()


async def test_max_connections_makes_requests_wait_for_a_free_one_within_the_connect_timeout() -> None:
    gate = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            await gate.wait()
            writer.write(reply(b"ok"))
            await writer.drain()

    async with serve(handler) as state:
        upstream = client(max_connections=1, connect_timeout=0.3)
        first = asyncio.create_task(get(upstream, state.port))
        await asyncio.sleep(0.05)
        with pytest.raises(UpstreamTimeout):  # the only connection stays busy past the timeout
            await get(upstream, state.port)
        second = asyncio.create_task(get(upstream, state.port))
        await asyncio.sleep(0.05)
        gate.set()
        assert await first == b"ok"
        assert await second == b"ok"
        await upstream.close()
    assert state.connections == 1  # the waiting request got the freed connection


async def test_reading_pauses_while_the_client_is_slow_and_nothing_is_lost() -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply(payload))
        await writer.drain()
        await reader.read()

    async with serve(handler) as state:
        upstream = client()
        response = await upstream.send("GET", f"http://127.0.0.1:{state.port}", b"/", b"", {}, None)
        await asyncio.sleep(0.3)  # a slow client: the body piles up to the high-water mark, no further
        connection = next(iter(upstream.connections))
        assert connection.paused
        assert connection.buffered < HIGH_WATER + 256 * 1024
        assert await response.read() == payload
        response.release()
        await upstream.close()


async def test_a_reply_to_head_has_no_body_whatever_its_length_says() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with serve(handler) as state:
        upstream = client(read_timeout=1.0)
        assert await get(upstream, state.port, method="HEAD") == b""
        await upstream.close()


async def test_a_malformed_reply_an_upgrade_or_a_reply_cut_short_is_an_upstream_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if number == 1:
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        elif number == 2:  # a switch to another protocol, which forwarding never asks for
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: x\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this")
        await writer.drain()

    async with serve(handler) as state:
        upstream = client()
        for _ in range(3):
            with pytest.raises(UpstreamError):
                await get(upstream, state.port)
        await upstream.close()


async def test_a_header_value_with_a_line_break_is_never_sent() -> None:
    async with serve(lambda r, w, n: r.read()) as state:
        upstream = client()
        with pytest.raises(ValueError, match="line break"):
            await get(upstream, state.port, headers={"x-a": "1\r\nx-injected: 2"})
        await upstream.close()
    assert state.connections == 0


async def test_https_is_verified_against_the_trusted_certificates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca, cert, key = make_tls_files(tmp_path, ["service.test"])
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    state_ref: list[Server] = []
    async with serve(keep_answering(b"secret", state_ref), tls) as state:
        state_ref.append(state)
        untrusting = client()  # the system's certificates only: our test CA is not among them
        with pytest.raises(UpstreamError):
            await untrusting.send("GET", f"https://127.0.0.1:{state.port}", b"/", b"", {}, None)
        await untrusting.close()
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # OpenSSL's default trust store, as deployments set it
        upstream = client()
        response = await upstream.send("GET", f"https://127.0.0.1:{state.port}", b"/", b"", {}, None)
        assert await response.read() == b"secret"
        response.release()
        assert await get_https(upstream, state.port) == b"secret"
        await upstream.close()
    assert state.connections == 1  # one connection, kept alive, served both (the refused one never got in)


async def get_https(upstream: Upstream, port: int) -> bytes:
    response = await upstream.send("GET", f"https://127.0.0.1:{port}", b"/", b"", {}, None)
    content = await response.read()
    response.release()
    return content
