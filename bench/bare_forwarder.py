"""The gateway's floor: uvicorn and one pooled HTTP client forwarding to chat, and nothing else.

No authentication, limits, quota, logs, spans or metrics: only the HTTP server and client work every
forwarder in Python pays. ``bench_gateway`` runs it twice beside the gateway, so the gateway's own share of
its CPU per request can be read off one run, whatever the machine's speed that day:

- ``BARE_FORWARDER_CLIENT=parley``: with the gateway's own client (``parley_gateway.upstream``), the same
  server and client the gateway forwards with; the gateway's number over this one is its own work.
- ``BARE_FORWARDER_CLIENT=aiohttp``: with aiohttp's client, what a typical Python forwarder pays.

Run as ``uvicorn bench.bare_forwarder:app`` with ``BARE_FORWARDER_UPSTREAM`` (chat's base URL) and
``BARE_FORWARDER_TOKEN`` (an internal token chat accepts).
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp
from parley_gateway.upstream import Upstream

_client: Any = None
_PARLEY = os.environ.get("BARE_FORWARDER_CLIENT", "aiohttp") == "parley"


async def _lifespan(receive: Any, send: Any) -> None:
    global _client
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if _PARLEY:
                _client = Upstream(connect_timeout=3.0, read_timeout=300.0, max_connections=1000)
            else:
                _client = aiohttp.ClientSession(auto_decompress=False)
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if _client is not None:
                await _client.close()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["path"] == "/livez":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    headers = {
        "authorization": "Bearer " + os.environ["BARE_FORWARDER_TOKEN"],
        "content-type": "application/json",
    }
    if _PARLEY:
        await _forward_parley(scope, body, headers, send)
    else:
        await _forward_aiohttp(scope, body, headers, send)


async def _forward_parley(scope: dict[str, Any], body: bytes, headers: dict[str, str], send: Any) -> None:
    upstream = await _client.send(
        "POST", os.environ["BARE_FORWARDER_UPSTREAM"], scope["raw_path"], b"", headers, body
    )
    content_type = upstream.headers.get("content-type") or "application/json"
    await send(
        {
            "type": "http.response.start",
            "status": upstream.status,
            "headers": [(b"content-type", content_type.encode())],
        }
    )
    if content_type.startswith("text/event-stream"):
        while data := await upstream.receive():
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    else:
        await send({"type": "http.response.body", "body": await upstream.read()})
    upstream.release()


async def _forward_aiohttp(scope: dict[str, Any], body: bytes, headers: dict[str, str], send: Any) -> None:
    upstream = await _client.post(
        os.environ["BARE_FORWARDER_UPSTREAM"] + scope["path"], data=body, headers=headers
    )
    content_type = upstream.headers.get("content-type", "application/json")
    await send(
        {
            "type": "http.response.start",
            "status": upstream.status,
            "headers": [(b"content-type", content_type.encode())],
        }
    )
    if content_type.startswith("text/event-stream"):
        async for data in upstream.content.iter_any():
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    else:
        await send({"type": "http.response.body", "body": await upstream.read()})
    upstream.release()
