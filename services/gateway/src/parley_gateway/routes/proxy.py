"""Forwarding to the services behind the gateway, with admission and settlement around model calls.

The caller's credential is replaced by a short-lived internal token the service verifies; the request
id and trace context go along. Model calls (``POST /v1/chat/completions`` and posting a conversation
message) reserve their estimated tokens before they are forwarded, ask chat for their usage
(``x-parley-usage: 1``) and settle with it; a failure refunds the reservation, and a stream cut by the
client settles with the gateway's own estimate (chat records the same estimate in the ledger).

These are plain Starlette routes: they parse nothing the handler does not need, which keeps the
gateway's own work per request small (see ``make bench``).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response
from parley_common.errors import Problem
from parley_common.responses import EventStreamResponse, LastChunk
from parley_common.telemetry import inject_context
from starlette.routing import Route

from parley_gateway.auth import Principal, authenticate, bearer
from parley_gateway.forwarding import (
    FORWARDED_REQUEST_HEADERS,
    StreamRelay,
    UpstreamFailed,
    is_event_stream,
    output_allowance,
    parse_json,
    prompt_estimate,
    read_body,
    response_headers,
    usage_of_json_body,
)
from parley_gateway.limits.headers import rate_limit_headers
from parley_gateway.limits.limiter import Grant, LimitsUnavailable, RateLimited, StaleIdentity
from parley_gateway.state import Gateway
from parley_gateway.upstream import UpstreamError, UpstreamResponse

# Request headers never passed through as they are (hop-by-hop, or set by the gateway).
HOP_BY_HOP_REQUEST = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "x-request-id",
        "traceparent",
        "tracestate",
    }
)
_FORWARDED_RAW = frozenset(name.encode() for name in FORWARDED_REQUEST_HEADERS)
_REFUSALS = {
    "requests": ("rate_limit_exceeded", "Rate limit reached for requests"),
    "tokens": ("rate_limit_exceeded", "Rate limit reached for tokens"),
    "streams": ("rate_limit_exceeded", "Too many concurrent streams"),
    "quota_daily": ("insufficient_quota", "Daily token quota exhausted"),
    "quota_monthly": ("insufficient_quota", "Monthly token quota exhausted"),
}


def _refusal(exc: RateLimited) -> Problem:
    decision = exc.decision
    code, what = _REFUSALS.get(decision.refused or "", ("rate_limit_exceeded", "Rate limit reached"))
    detail = f"{what} on your plan. Try again in {max(1, round(decision.retry_after))}s."
    return Problem(429, code, detail, headers=rate_limit_headers(decision))


def _unavailable(exc: LimitsUnavailable) -> Problem:
    return Problem(
        503,
        "limits_unavailable",
        f"The {exc.concern} limit cannot be checked right now; try again shortly.",
        headers={"retry-after": "1"},
    )


async def _admit(
    gw: Gateway, request: Request, payload: dict[str, Any] | None, *, stream: bool, model_call: bool
) -> tuple[Principal, Grant, int]:
    """Authenticate and admit; returns (principal, grant, prompt estimate)."""
    credential = bearer(request)
    for attempt in range(3):
        principal = await authenticate(gw, credential)
        account = principal.account
        prompt = prompt_estimate(payload) if model_call and payload is not None else 0
        cost = prompt + output_allowance(payload, account.plan.max_output_tokens) if payload else 0
        if (
            model_call
            and account.plan.tokens_per_minute is not None
            and cost > account.plan.tokens_per_minute
        ):
            raise Problem(
                400,
                "request_too_large",
                f"This request may use {cost} tokens, more than your plan's "
                f"{account.plan.tokens_per_minute} tokens per minute; lower max_tokens.",
                param="max_tokens",
            )
        try:
            grant = await gw.limiter.admit(
                account.keys,
                account.plan,
                # Still outdated after two reloads: Redis holds revisions the database never had (a
                # restored database, a shared Redis). Serve from the tables rather than refuse.
                gw.directory.revisions(account) if attempt < 2 else ("", ""),
                cost=cost if model_call else 0,
                stream=stream,
                model_call=model_call,
            )
        except StaleIdentity as stale:
            await gw.directory.refresh_after(stale, account.id)
            continue
        except RateLimited as exc:
            raise _refusal(exc) from None
        except LimitsUnavailable as exc:
            raise _unavailable(exc) from None
        return principal, grant, prompt
    raise AssertionError("unreachable: the last attempt skips the revision check")


def _upstream_headers(
    gw: Gateway, request: Request, principal: Principal | None, *, model_call: bool
) -> dict[str, str]:
    headers = {
        name.decode(): value.decode("latin-1")
        for name, value in request.scope["headers"]
        if name in _FORWARDED_RAW and value
    }
    if principal is not None:
        token = gw.directory.internal_token(principal.account, principal.api_key_id)
        headers["authorization"] = "Bearer " + token
    headers["x-request-id"] = request.state.request_id
    if model_call:
        headers["x-parley-usage"] = "1"
    return headers


async def _send(
    gw: Gateway, request: Request, base_url: str, headers: dict[str, str], body: bytes
) -> UpstreamResponse:
    # The service continues the gateway's server span (traceparent); a client span of its own would add
    # little to a trace and cost every request.
    inject_context(headers)
    scope = request.scope
    try:
        return await gw.upstream.send(
            scope["method"],
            base_url,
            scope.get("raw_path") or scope["path"].encode(),
            scope["query_string"],
            headers,
            body if body else None,
        )
    except UpstreamError as exc:
        raise UpstreamFailed.of(exc).problem from None


async def _read(upstream: UpstreamResponse) -> bytes:
    try:
        return await upstream.read()
    except UpstreamError as exc:
        raise UpstreamFailed.of(exc).problem from None


async def _model_call(request: Request, base_url: str) -> Response:
    gw: Gateway = request.app.state.gw
    body = await read_body(request, gw.settings.max_body_bytes)
    payload = parse_json(body, gw.settings.max_json_depth)
    if not isinstance(payload, dict):
        raise Problem(400, "invalid_request_error", "The request body must be a JSON object.")
    stream = payload.get("stream") is True
    options = payload.get("stream_options")
    keep_usage_chunk = isinstance(options, dict) and options.get("include_usage") is True
    principal, grant, prompt = await _admit(gw, request, payload, stream=stream, model_call=True)
    limiter = gw.limiter
    try:
        upstream = await _send(
            gw, request, base_url, _upstream_headers(gw, request, principal, model_call=True), body
        )
    except BaseException:
        limiter.settle(grant, 0)  # nothing reached the model: refund
        raise
    headers = response_headers(upstream)
    headers.update(rate_limit_headers(grant.decision))
    if not is_event_stream(upstream):
        try:
            content = await _read(upstream)
        except BaseException:
            upstream.close()
            limiter.settle(grant, 0)
            raise
        upstream.release()
        ok = 200 <= upstream.status < 300
        limiter.settle(grant, usage_of_json_body(content, prompt) if ok else 0)
        return Response(content, status_code=upstream.status, headers=headers)

    relay = StreamRelay(upstream, keep_usage_chunk)
    settled = False

    def settle() -> None:
        nonlocal settled
        if not settled:
            settled = True
            limiter.settle(grant, relay.usage if relay.usage is not None else relay.estimate(prompt))

    async def body_iterator() -> Any:
        try:
            async for chunk in relay.events():
                if type(chunk) is LastChunk:
                    settle()  # the client has the whole reply: its stream slot and tokens are done with
                yield chunk
        finally:
            # Completion, upstream failure or client disconnect (this task is cancelled): close the
            # upstream at once so chat sees the disconnect too, then settle what was used.
            # Nothing here awaits, so it runs to the end even in a cancelled task.
            if relay.completed:
                upstream.release()
            else:
                upstream.close()
            settle()

    return EventStreamResponse(body_iterator(), status_code=upstream.status, headers=headers)


async def _forward(request: Request, base_url: str, *, admin_only: bool = False) -> Response:
    gw: Gateway = request.app.state.gw
    body = await read_body(request, gw.settings.max_body_bytes)
    if body and request.headers.get("content-type", "").startswith("application/json"):
        parse_json(body, gw.settings.max_json_depth)
    principal, grant, _ = await _admit(gw, request, None, stream=False, model_call=False)
    if admin_only and principal.account.role != "admin":
        raise Problem(403, "forbidden", "This route is for administrators.")
    upstream = await _send(
        gw, request, base_url, _upstream_headers(gw, request, principal, model_call=False), body
    )
    return await _relay_plain(upstream, rate_limit_headers(grant.decision))


async def _relay_plain(upstream: Any, extra_headers: dict[str, str]) -> Response:
    headers = response_headers(upstream)
    headers.update(extra_headers)
    if is_event_stream(upstream):

        async def passthrough() -> Any:
            try:
                while data := await upstream.receive():
                    yield data
            finally:
                upstream.release()  # kept alive only when the body was read to the end

        return EventStreamResponse(passthrough(), status_code=upstream.status, headers=headers)
    try:
        content = await _read(upstream)
    finally:
        upstream.release()
    return Response(content, status_code=upstream.status, headers=headers)


async def _inbound_billing(request: Request) -> Response:
    """Billing provider webhooks: no gateway credential; the webhooks service verifies the signature."""
    gw: Gateway = request.app.state.gw
    body = await read_body(request, gw.settings.max_body_bytes)
    headers = {
        k: v
        for k, v in request.headers.items()
        if k not in HOP_BY_HOP_REQUEST and k not in ("authorization", "cookie", "host")
    }
    headers["x-request-id"] = request.state.request_id
    upstream = await _send(gw, request, gw.settings.webhooks_url, headers, body)
    return await _relay_plain(upstream, {})


async def chat_completions(request: Request) -> Response:
    return await _model_call(request, request.app.state.gw.settings.chat_url)


async def conversation_message(request: Request) -> Response:
    if request.method == "POST":
        return await _model_call(request, request.app.state.gw.settings.chat_url)
    return await _forward(request, request.app.state.gw.settings.chat_url)


async def to_chat(request: Request) -> Response:
    return await _forward(request, request.app.state.gw.settings.chat_url)


async def to_usage(request: Request) -> Response:
    return await _forward(request, request.app.state.gw.settings.usage_url)


async def to_usage_admin(request: Request) -> Response:
    return await _forward(request, request.app.state.gw.settings.usage_url, admin_only=True)


async def to_webhooks(request: Request) -> Response:
    return await _forward(request, request.app.state.gw.settings.webhooks_url)


async def to_webhooks_admin(request: Request) -> Response:
    return await _forward(request, request.app.state.gw.settings.webhooks_url, admin_only=True)


ALL = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def routes() -> list[Route]:
    """The forwarded routes, most specific first."""
    return [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/conversations/{conversation_id}/messages", conversation_message, methods=["GET", "POST"]),
        Route("/v1/conversations", to_chat, methods=ALL),
        Route("/v1/conversations/{rest:path}", to_chat, methods=ALL),
        Route("/v1/documents", to_chat, methods=ALL),
        Route("/v1/documents/{rest:path}", to_chat, methods=ALL),
        Route("/v1/models", to_chat, methods=["GET"]),
        Route("/v1/models/{rest:path}", to_chat, methods=["GET"]),
        Route("/v1/usage", to_usage, methods=ALL),
        Route("/v1/usage/{rest:path}", to_usage, methods=ALL),
        Route("/v1/admin/usage", to_usage_admin, methods=ALL),
        Route("/v1/admin/usage/{rest:path}", to_usage_admin, methods=ALL),
        Route("/v1/webhooks/inbound/billing", _inbound_billing, methods=["POST"]),
        Route("/v1/webhooks/{rest:path}", to_webhooks, methods=ALL),
        Route("/v1/admin/webhooks/{rest:path}", to_webhooks_admin, methods=ALL),
    ]
