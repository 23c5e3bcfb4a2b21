"""The gateway's floor: uvicorn and one pooled aiohttp client forwarding to chat, and nothing else.

No authentication, limits, quota, logs, spans or metrics: only the HTTP server and client work every
forwarder in Python pays. ``bench_gateway`` runs it beside the gateway so the gateway's own share of its
CPU per request can be read off one run, whatever the machine's speed that day.

Run as ``uvicorn bench.bare_forwarder:app`` with ``BARE_FORWARDER_UPSTREAM`` (chat's base URL) and
``BARE_FORWARDER_TOKEN`` (an internal token chat accepts).
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp

_session: aiohttp.ClientSession | None = None


async def _lifespan(receive: Any, send: Any) -> None:
    global _session
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            _session = aiohttp.ClientSession(auto_decompress=False)
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if _session is not None:
                await _session.close()
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
    assert _session is not None
    upstream = await _session.post(
        os.environ["BARE_FORWARDER_UPSTREAM"] + scope["path"],
        data=body,
        headers={
            "authorization": "Bearer " + os.environ["BARE_FORWARDER_TOKEN"],
            "content-type": "application/json",
        },
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
