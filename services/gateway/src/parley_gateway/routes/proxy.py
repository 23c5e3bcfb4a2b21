"""Forwarding to the services behind the gateway.

One pooled HTTP client for the process. The caller's credential is replaced by a short-lived internal
token the service verifies; the request id and trace context go along. Streamed replies pass through
chunk by chunk, and when the client goes away the upstream request is closed at once, so the service
sees the disconnect too.
"""

from __future__ import annotations

import anyio
import httpx
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from opentelemetry.trace import SpanKind
from parley_common.auth.internal import InternalIdentity, PlanClaims, mint_internal_token
from parley_common.errors import Problem
from parley_common.telemetry import inject_context, tracer

from parley_gateway.deps import CurrentUser
from parley_gateway.security import TokenService

router = APIRouter()

# Response headers that describe the hop, not the payload (RFC 9110 §7.6.1), or that we set ourselves.
_DROP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server", "x-request-id"}
)


async def forward(request: Request, base_url: str, identity: InternalIdentity) -> Response:
    client: httpx.AsyncClient = request.app.state.http
    tokens: TokenService = request.app.state.tokens
    internal = mint_internal_token(
        tokens.signing_key, identity, ttl=request.app.state.settings.internal_token_ttl
    )
    headers = {
        "authorization": f"Bearer {internal}",
        "content-type": request.headers.get("content-type", "application/json"),
        "accept": request.headers.get("accept", "*/*"),
        "x-request-id": request.state.request_id,
    }
    body = await request.body()
    with tracer("parley.gateway").start_as_current_span(f"{request.method} upstream", kind=SpanKind.CLIENT):
        inject_context(headers)
        upstream_request = client.build_request(
            request.method,
            base_url + request.url.path,
            content=body,
            headers=headers,
            params=request.query_params,
        )
        try:
            upstream = await client.send(upstream_request, stream=True)
        except httpx.TimeoutException:
            raise Problem(504, "upstream_timeout", "The service did not answer in time.") from None
        except httpx.TransportError:
            raise Problem(502, "upstream_unavailable", "The service is unavailable.") from None
    response_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _DROP}
    if not upstream.headers.get("content-type", "").startswith("text/event-stream"):
        try:
            content = await upstream.aread()
        finally:
            await upstream.aclose()
        return Response(content, status_code=upstream.status_code, headers=response_headers)

    async def relay_stream() -> object:
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        finally:
            # Runs on completion and on client disconnect (the task is cancelled): close the upstream
            # stream even while cancelled, so the service learns at once that nobody is listening.
            with anyio.CancelScope(shield=True):
                await upstream.aclose()

    return StreamingResponse(relay_stream(), status_code=upstream.status_code, headers=response_headers)  # type: ignore[arg-type]


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, user: CurrentUser) -> Response:
    identity = InternalIdentity(
        user_id=user.user_id,
        role="admin" if user.role == "admin" else "user",
        plan=PlanClaims(name=user.plan),
    )
    return await forward(request, request.app.state.settings.chat_url, identity)
