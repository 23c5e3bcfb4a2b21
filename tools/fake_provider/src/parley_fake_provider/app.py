"""The fake provider: ``GET /v1/models`` and ``POST /v1/chat/completions`` (streaming and not).

Behaviour is set at start (``--chunks``, ``--chunk-delay-ms``, ``--errors 500,500`` …) and can be
changed while it runs with ``POST /_fake/config``; ``GET /_fake/stats`` reports every call, including when
a streamed call was closed by its client, so tests can check that cancellations reach the provider.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from parley_fake_provider.tokens import completion_tokens, prompt_tokens, reply_words


@dataclass
class Behaviour:
    chunks: int = 8  # completion tokens when the request sets no lower cap
    chunk_delay_ms: float = 0.0  # between streamed chunks
    first_token_delay_ms: float = 0.0  # before the first chunk, or before a non-streamed answer
    errors: list[int] = field(default_factory=list)  # statuses for the next calls, consumed in order
    retry_after: int | None = None  # Retry-After seconds sent with 429/503 errors
    fail_stream_after: int | None = None  # abort a stream after this many chunks
    stall_stream_after: int | None = None  # stop sending (but keep the connection) after this many chunks
    record_messages: bool = False  # keep each call's messages in /_fake/stats (tests of prompt building)
    api_key: str | None = None  # when set, calls must send it as a bearer token
    models: list[str] = field(default_factory=lambda: ["gpt-4o-mini", "gpt-4o", "parley-offline"])
    owned_by: str = "parley-fake-provider"


@dataclass
class CallRecord:
    id: str
    model: str
    stream: bool
    started: float
    ended: float | None = None
    outcome: str = "open"  # completed | cancelled | failed | error:<status>
    chunks_sent: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    message_count: int = 0
    messages: list[dict[str, Any]] | None = None


class State:
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.initial = copy.deepcopy(behaviour)
        self.calls: deque[CallRecord] = deque(maxlen=20_000)
        self.total_calls = 0

    def stats(self) -> dict[str, Any]:
        outcomes: dict[str, int] = {}
        for call in self.calls:
            outcomes[call.outcome] = outcomes.get(call.outcome, 0) + 1
        return {
            "total_calls": self.total_calls,
            "outcomes": outcomes,
            "calls": [asdict(c) for c in self.calls],
        }


def _error(status: int, message: str, retry_after: int | None = None) -> JSONResponse:
    headers = {"retry-after": str(retry_after)} if retry_after is not None and status in (429, 503) else {}
    kind = (
        "rate_limit_exceeded"
        if status == 429
        else ("server_error" if status >= 500 else "invalid_request_error")
    )
    return JSONResponse(
        {"error": {"message": message, "type": kind, "code": None, "param": None}}, status, headers=headers
    )


def create_app(behaviour: Behaviour | None = None) -> FastAPI:
    state = State(behaviour or Behaviour())
    app = FastAPI(title="parley-fake-provider", docs_url=None, redoc_url=None)
    app.state.fake = state

    def authorised(request: Request) -> bool:
        key = state.behaviour.api_key
        return key is None or request.headers.get("authorization") == f"Bearer {key}"

    @app.get("/livez")
    async def livez() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        if not authorised(request):
            return _error(401, "Incorrect API key provided.")
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": state.behaviour.owned_by}
            for m in state.behaviour.models
        ]
        return JSONResponse({"object": "list", "data": data})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = await request.json()
        b = state.behaviour
        state.total_calls += 1
        record = CallRecord(
            id=f"chatcmpl-{uuid.uuid4().hex[:24]}",
            model=str(body.get("model", "")),
            stream=bool(body.get("stream")),
            started=time.time(),
            headers={
                k: v for k, v in request.headers.items() if k in ("traceparent", "x-request-id", "user-agent")
            },
        )
        state.calls.append(record)
        if not authorised(request):
            record.outcome, record.ended = "error:401", time.time()
            return _error(401, "Incorrect API key provided.")
        if b.errors:
            status = b.errors.pop(0)
            if status >= 400:
                record.outcome, record.ended = f"error:{status}", time.time()
                return _error(status, f"fake provider error {status}", b.retry_after)
        messages = body.get("messages") or []
        if not isinstance(messages, list) or not messages:
            record.outcome, record.ended = "error:400", time.time()
            return _error(400, "messages must be a non-empty list")
        record.message_count = len(messages)
        if b.record_messages:
            record.messages = messages
        if record.model not in b.models:
            record.outcome, record.ended = "error:404", time.time()
            return _error(404, f"The model `{record.model}` does not exist")
        record.prompt_tokens = prompt_tokens(messages)
        record.completion_tokens = completion_tokens(body, b.chunks)
        words = reply_words(messages, record.completion_tokens)
        usage = {
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens,
            "total_tokens": record.prompt_tokens + record.completion_tokens,
        }
        created = int(record.started)
        if b.first_token_delay_ms:
            await asyncio.sleep(b.first_token_delay_ms / 1000)
        if not record.stream:
            record.outcome, record.ended, record.chunks_sent = "completed", time.time(), len(words)
            finish = "length" if len(words) < b.chunks else "stop"
            return JSONResponse(
                {
                    "id": record.id,
                    "object": "chat.completion",
                    "created": created,
                    "model": record.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": " ".join(words), "refusal": None},
                            "finish_reason": finish,
                            "logprobs": None,
                        }
                    ],
                    "usage": usage,
                    "system_fingerprint": "fp_fake",
                }
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(
            _stream(record, words, usage, include_usage, created, b), media_type="text/event-stream"
        )

    @app.get("/_fake/stats")
    async def stats() -> dict[str, Any]:
        return state.stats()

    @app.post("/_fake/config")
    async def configure(request: Request) -> dict[str, Any]:
        """Change the behaviour; ``{"reset": true, ...}`` first restores the one it started with."""
        updates = await request.json()
        if updates.pop("reset", False):
            state.behaviour = copy.deepcopy(state.initial)
        names = {f.name for f in fields(Behaviour)}
        for key, value in updates.items():
            if key in names:
                setattr(state.behaviour, key, value)
        return asdict(state.behaviour)

    @app.post("/_fake/reset")
    async def reset() -> dict[str, str]:
        state.calls.clear()
        state.total_calls = 0
        return {"status": "ok"}

    return app


def _chunk(
    record: CallRecord, created: int, delta: dict[str, Any], finish: str | None, usage: Any = None
) -> bytes:
    payload = {
        "id": record.id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": record.model,
        "system_fingerprint": "fp_fake",
        "choices": []
        if usage is not None
        else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }
    if usage is not None:
        payload["usage"] = usage
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def _stream(
    record: CallRecord,
    words: list[str],
    usage: dict[str, int],
    include_usage: bool,
    created: int,
    b: Behaviour,
) -> AsyncIterator[bytes]:
    try:
        yield _chunk(record, created, {"role": "assistant", "content": ""}, None)
        for i, word in enumerate(words):
            if b.fail_stream_after is not None and i >= b.fail_stream_after:
                record.outcome = "failed"
                raise RuntimeError("fake provider: stream failure injected")
            if b.stall_stream_after is not None and i >= b.stall_stream_after:
                await asyncio.Event().wait()  # until the client gives up and the call is cancelled
            if b.chunk_delay_ms and i:
                await asyncio.sleep(b.chunk_delay_ms / 1000)
            yield _chunk(record, created, {"content": word if i == 0 else " " + word}, None)
            record.chunks_sent = i + 1
        yield _chunk(record, created, {}, "length" if len(words) < b.chunks else "stop")
        if include_usage:
            yield _chunk(record, created, {}, None, usage=usage)
        yield b"data: [DONE]\n\n"
        record.outcome = "completed"
    except (asyncio.CancelledError, GeneratorExit):
        record.outcome = "cancelled"
        raise
    finally:
        record.ended = time.time()


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--chunks", type=int, default=Behaviour.chunks)
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    parser.add_argument("--first-token-delay-ms", type=float, default=0.0)
    parser.add_argument(
        "--errors", default="", help="comma-separated statuses for the first calls, e.g. 500,500"
    )
    parser.add_argument("--retry-after", type=int, default=None)
    parser.add_argument("--fail-stream-after", type=int, default=None)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--models", default=",".join(Behaviour().models))
    args = parser.parse_args()
    behaviour = Behaviour(
        chunks=args.chunks,
        chunk_delay_ms=args.chunk_delay_ms,
        first_token_delay_ms=args.first_token_delay_ms,
        errors=[int(s) for s in args.errors.split(",") if s.strip()],
        retry_after=args.retry_after,
        fail_stream_after=args.fail_stream_after,
        api_key=args.api_key,
        models=[m.strip() for m in args.models.split(",") if m.strip()],
    )
    uvicorn.run(create_app(behaviour), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
