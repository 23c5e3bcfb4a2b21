"""ASGI plumbing every HTTP process shares: request ids, server spans, metrics, access log, health.

The middleware is plain ASGI (not ``BaseHTTPMiddleware``) so it adds no task per request and never buffers
a streamed body: the span and the access line close when the last byte of the response has been sent.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from parley_common.errors import PROBLEM_JSON, problem_body
from parley_common.logs import bind_context, clear_context, get_logger
from parley_common.metrics import HTTP_LATENCY, HTTP_REQUESTS, render_latest
from parley_common.telemetry import tracer

log = get_logger("parley.http")

_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_QUIET_PATHS = frozenset({"/metrics", "/livez", "/readyz", "/startupz"})

ReadinessCheck = Callable[[], Awaitable[object]]


def new_request_id() -> str:
    return uuid.uuid4().hex


class RequestContextMiddleware:
    """Binds ``request_id`` for logs, continues or starts the trace, counts and logs every request.

    An incoming ``x-request-id`` is kept when it is well formed (the gateway sets it for the services
    behind it) and echoed on the response.
    """

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service
        self.tracer = tracer("parley.http")
        # Each (method, route, status)'s metric children, looked up once: labels() costs a lock and a
        # tuple check on every call, and the set of routes and statuses is small and fixed.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier: dict[str, str] = {}
        request_id = ""
        for raw_name, raw_value in scope["headers"]:
            if raw_name == b"x-request-id":
                value = raw_value.decode("latin-1")
                request_id = value if _REQUEST_ID_OK.match(value) else ""
            elif raw_name in (b"traceparent", b"tracestate"):
                carrier[raw_name.decode()] = raw_value.decode("latin-1")
        request_id = request_id or new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        clear_context()
        bind_context(request_id=request_id)

        method = scope["method"]
        path = scope["path"]
        token = otel_context.attach(propagate.extract(carrier))
        span = self.tracer.start_span(f"{method} {path}", kind=SpanKind.SERVER)
        span_token = otel_context.attach(trace.set_span_in_context(span))
        started = time.perf_counter()
        status = 500
        id_header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), id_header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            status = 499  # client went away (nginx's convention)
            raise
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            route_path = getattr(route, "path", "unmatched")
            span.update_name(f"{method} {route_path}")
            span.set_attribute("http.request.method", method)
            span.set_attribute("http.route", route_path)
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            children = self._children.get((method, route_path, status))
            if children is None:
                children = (
                    HTTP_REQUESTS.labels(self.service, method, route_path, str(status)),
                    HTTP_LATENCY.labels(self.service, method, route_path),
                )
                if len(self._children) < 10_000:  # bounded: methods and statuses come from clients
                    self._children[(method, route_path, status)] = children
            children[0].inc()
            children[1].observe(elapsed)
            if path not in _QUIET_PATHS:
                log.info(
                    "http.request",
                    method=method,
                    path=path,
                    route=route_path,
                    status=status,
                    duration_ms=round(elapsed * 1000, 2),
                )
            span.end()
            otel_context.detach(span_token)
            otel_context.detach(token)


def health_router(checks: Callable[[], dict[str, ReadinessCheck]], *, timeout: float = 2.0) -> APIRouter:
    """``/livez`` (the process answers) and ``/readyz`` (its dependencies answer, each within ``timeout``)."""
    router = APIRouter(include_in_schema=False)

    @router.get("/livez")
    async def livez() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz() -> Response:
        results: dict[str, str] = {}

        async def run(name: str, check: ReadinessCheck) -> None:
            try:
                await asyncio.wait_for(check(), timeout)
                results[name] = "ok"
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready"; the reason is logged, not returned
                log.warning("health.check_failed", check=name, error=type(exc).__name__)
                results[name] = "failing"

        await asyncio.gather(*(run(name, check) for name, check in checks().items()))
        if all(value == "ok" for value in results.values()):
            return JSONResponse({"status": "ok", "checks": results})
        failing = sorted(name for name, value in results.items() if value != "ok")
        body = problem_body(503, "not_ready", "Failing dependencies: " + ", ".join(failing), checks=results)
        return JSONResponse(body, status_code=503, media_type=PROBLEM_JSON)

    return router


def metrics_router() -> APIRouter:
    """``GET /metrics`` in Prometheus text format."""
    router = APIRouter(include_in_schema=False)

    @router.get("/metrics")
    async def metrics() -> Response:
        body, content_type = render_latest()
        return Response(body, media_type=content_type)

    return router


def client_ip(scope_or_request: Any) -> str:
    """The peer address (the proxy's when behind one; uvicorn's --proxy-headers resolves X-Forwarded-For)."""
    client = getattr(scope_or_request, "client", None)
    return client.host if client else "unknown"
