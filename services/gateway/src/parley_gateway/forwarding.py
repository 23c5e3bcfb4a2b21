"""Talking to the services behind the gateway: request bodies in, responses out.

One pooled client per process (``parley_gateway.upstream``). Request bodies are read with a size cap and JSON bodies are
checked for depth before anything is forwarded. Streamed replies pass through event by event; the
usage-only chunk chat appends to every stream for the gateway is taken out unless the client asked for
it (``stream_options.include_usage``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from parley_common.errors import Problem
from parley_common.responses import LastChunk
from parley_common.tokens import count_text_tokens, estimate_prompt_tokens, message_text

from parley_gateway.upstream import UpstreamError, UpstreamResponse, UpstreamTimeout

# Headers that describe one hop (RFC 9110 §7.6.1), or that the gateway sets itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "date",
        "server",
        "x-request-id",
    }
)
# Request headers a client may send through to a service (everything else stays at the gateway).
FORWARDED_REQUEST_HEADERS = ("content-type", "accept", "idempotency-key", "openai-beta")


class UpstreamFailed(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.problem = Problem(status, code, detail)

    @classmethod
    def of(cls, error: UpstreamError) -> UpstreamFailed:
        if isinstance(error, UpstreamTimeout):
            return cls(504, "upstream_timeout", "The service did not answer in time.")
        return cls(502, "upstream_unavailable", "The service is unavailable.")


def response_headers(upstream: UpstreamResponse) -> dict[str, str]:
    return {k: v for k, v in upstream.headers.items() if k not in HOP_BY_HOP}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (checked before reading when declared)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise _too_large(limit)
        except ValueError:
            raise Problem(400, "invalid_request_error", "Content-Length is not a number.") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> Problem:
    return Problem(413, "request_too_large", f"The request body exceeds {limit} bytes.")


def parse_json(body: bytes, max_depth: int) -> Any:
    """The decoded body; 400 when it is not JSON or nests deeper than ``max_depth``."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise Problem(400, "invalid_request_error", "The request body is not valid JSON.") from None
    # Nesting needs an opening bracket per level: a body with fewer of them cannot be too deep, and most
    # are (counting in C is far cheaper than walking the decoded value).
    if body.count(b"{") + body.count(b"[") > max_depth and _depth_exceeds(value, max_depth):
        raise Problem(400, "invalid_request_error", f"The request body nests deeper than {max_depth} levels.")
    return value


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


# -- model calls: cost estimates and usage ------------------------------------------------------------


def prompt_estimate(payload: dict[str, Any]) -> int:
    """Offline estimate of the prompt tokens of a completion or conversation-message request."""
    messages = payload.get("messages")
    if isinstance(messages, list):
        return estimate_prompt_tokens([m for m in messages if isinstance(m, dict)])
    return estimate_prompt_tokens([{"role": "user", "content": payload.get("content", "")}])


def output_allowance(payload: dict[str, Any], plan_cap: int) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        value = payload.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return plan_cap


def usage_total(usage: Any) -> int | None:
    if not isinstance(usage, dict):
        return None
    total = usage.get("total_tokens")
    if isinstance(total, int):
        return total
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if isinstance(prompt, int) and isinstance(completion, int):
        return prompt + completion
    return None


def usage_of_json_body(body: bytes, prompt: int) -> int:
    """Tokens a non-streamed reply consumed: chat's ``usage``, else an estimate from its text."""
    try:
        payload = json.loads(body)
    except ValueError:
        return prompt
    if not isinstance(payload, dict):
        return prompt
    total = usage_total(payload.get("usage"))
    if total is not None:
        return total
    text = ""
    for choice in payload.get("choices") or ():
        if isinstance(choice, dict) and isinstance(choice.get("message"), dict):
            text += message_text(choice["message"].get("content"))
    return prompt + count_text_tokens(text)


class StreamRelay:
    """Relays an SSE reply as it arrives, keeping what settlement needs.

    Work is per block received, not per event: a block passes through as it is, up to its last complete
    event (the rest waits for the next block), unless it mentions ``"usage":``. Only such a block is cut
    into events, to record the usage and to take out the usage-only chunk chat appends for the gateway,
    which reaches the client only if ``keep_usage_chunk``. When the stream ends or is cut without usage,
    ``estimate()`` counts what was relayed.
    """

    def __init__(self, upstream: UpstreamResponse, keep_usage_chunk: bool) -> None:
        self.upstream = upstream
        self.keep_usage_chunk = keep_usage_chunk
        self.usage: int | None = None
        self.completed = False
        self._relayed: list[bytes] = []

    async def events(self) -> AsyncIterator[bytes]:
        pending = b""
        ended = False  # data: [DONE] has gone to the client
        receive = self.upstream.receive
        while True:
            try:
                data = await receive()
            except UpstreamError:
                if ended:  # the client has the whole stream; only the end of chat's reply is missing
                    return
                raise
            if not data:
                break
            if pending:
                data, pending = pending + data, b""
            end = data.rfind(b"\n\n")
            if end < 0:  # no complete event yet
                pending = data
                continue
            if end + 2 < len(data):
                data, pending = data[: end + 2], data[end + 2 :]
            if b'"usage":' in data:
                data = self._take_usage(data)
            if data:
                self._relayed.append(data)
                # The stream's own end: the client gets it with the end of the response, at once, while
                # the relay reads on to the end of chat's reply (its connection is then reused).
                if data.endswith(b"data: [DONE]\n\n"):
                    ended = True
                    yield LastChunk(data)
                else:
                    yield data
        if pending:
            self._relayed.append(pending)
            yield pending
        self.completed = True

    def _take_usage(self, block: bytes) -> bytes:
        """``block`` with the usage recorded, and without the usage-only chunk unless it is wanted."""
        kept = []
        for event in block.split(b"\n\n")[:-1]:
            if b'"usage":' not in event:  # most events of the block: passed on unparsed
                kept.append(event + b"\n\n")
                continue
            chunk = _event_json(event)
            total = usage_total(chunk.get("usage")) if chunk is not None else None
            if total is not None:
                self.usage = total
                if not chunk.get("choices") and not self.keep_usage_chunk:  # type: ignore[union-attr]
                    continue
            kept.append(event + b"\n\n")
        return b"".join(kept)

    def estimate(self, prompt: int) -> int:
        text: list[str] = []
        for event in b"".join(self._relayed).split(b"\n\n"):
            chunk = _event_json(event)
            choices = chunk.get("choices") if chunk is not None else None
            for choice in choices if isinstance(choices, list) else ():
                delta = choice.get("delta") if isinstance(choice, dict) else None
                if isinstance(delta, dict) and isinstance(delta.get("content"), str):
                    text.append(delta["content"])
        return prompt + count_text_tokens("".join(text))


def _event_json(event: bytes) -> dict[str, Any] | None:
    """The JSON object in an SSE event's ``data:`` line; None for ``[DONE]``, comments or garbage."""
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            try:
                value = json.loads(line[5:])
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
    return None


def is_event_stream(upstream: UpstreamResponse) -> bool:
    return (upstream.headers.get("content-type") or "").startswith("text/event-stream")
