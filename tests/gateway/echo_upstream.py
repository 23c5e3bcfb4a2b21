"""A recording HTTP server standing in for a service behind the gateway, for forwarding tests.

It records every request it receives (method, path, query, headers, body) and answers:

- ``POST /v1/chat/completions`` like chat does under the gateway's usage contract: JSON with ``usage``,
  or, with ``"stream": true``, SSE chunks, then the usage-only chunk ``{"choices": [], "usage": …}``
  whatever the client asked, then ``data: [DONE]``. ``"hang": true`` in the body keeps the stream open
  after the first chunk until the client leaves; ``"linger": s`` ends the reply s seconds after
  ``data: [DONE]``; ``"sleep": s`` delays the answer; ``"split": n`` sends
  the stream in pieces of ``n`` bytes, 5 ms apart, so events arrive cut anywhere.
- anything else: ``{"echo": true, ...}`` with status 200.

``GET /_echo/requests`` lists what was recorded; ``POST /_echo/reset`` forgets it.

    python -m tests.gateway.echo_upstream --port 8123
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
recorded: list[dict[str, Any]] = []


async def _body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def _json(send: Any, status: int, payload: Any) -> None:
    body = json.dumps(payload).encode()
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": body})


def _chunk(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path, method = scope["path"], scope["method"]
    body = await _body(receive)
    if path == "/_echo/requests":
        await _json(send, 200, recorded)
        return
    if path == "/_echo/reset":
        recorded.clear()
        await _json(send, 200, {"ok": True})
        return
    if path == "/livez":
        await _json(send, 200, {"status": "ok"})
        return
    entry = {
        "method": method,
        "path": path,
        "query": scope["query_string"].decode(),
        "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
        "body": body.decode(errors="replace"),
        "disconnected": False,
    }
    recorded.append(entry)
    request: dict[str, Any] = {}
    if body:
        try:
            request = json.loads(body)
        except ValueError:
            request = {}
    if isinstance(request, dict) and request.get("sleep"):
        await asyncio.sleep(float(request["sleep"]))
    if path == "/v1/chat/completions" and method == "POST" and isinstance(request, dict):
        if not request.get("stream"):
            await _json(
                send,
                200,
                {
                    "id": "chatcmpl-echo",
                    "object": "chat.completion",
                    "model": request.get("model", "echo"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
                    "usage": USAGE,
                },
            )
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        base = {"id": "chatcmpl-echo", "object": "chat.completion.chunk", "model": "echo"}
        if request.get("split"):
            await _send_split(send, base, int(request["split"]))
            return
        for word in ("hello", " there", " friend"):
            choice = {"index": 0, "delta": {"content": word}, "finish_reason": None}
            await send(
                {
                    "type": "http.response.body",
                    "body": _chunk({**base, "choices": [choice]}),
                    "more_body": True,
                }
            )
            if request.get("hang"):
                while (await receive())["type"] != "http.disconnect":
                    pass
                entry["disconnected"] = True
                return
        await send(
            {
                "type": "http.response.body",
                "body": _chunk({**base, "choices": [], "usage": USAGE}),
                "more_body": True,
            }
        )
        if request.get("linger"):  # the stream is over, but the reply itself ends only later
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": True})
            await asyncio.sleep(float(request["linger"]))
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        return
    await _json(send, 200, {"echo": True, "path": path, "method": method})


async def _send_split(send: Any, base: dict[str, Any], size: int) -> None:
    words = [
        {"index": 0, "delta": {"content": w}, "finish_reason": None} for w in ("hello", " there", " friend")
    ]
    stream = b"".join(_chunk({**base, "choices": [choice]}) for choice in words)
    stream += _chunk({**base, "choices": [], "usage": USAGE}) + b"data: [DONE]\n\n"
    for start in range(0, len(stream), size):
        await send({"type": "http.response.body", "body": stream[start : start + size], "more_body": True})
        await asyncio.sleep(0.005)  # its own TCP segment, read on its own
    await send({"type": "http.response.body", "body": b""})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
