"""The forwarded routes, served without FastAPI's per-request layers.

Nearly every request the gateway sees is forwarded (a completion, a stream, a conversation call). Through
FastAPI each one passes five middleware layers, the router and the endpoint wrappers, and every chunk of
a stream passes four ``send`` wrappers on its way out: measured with ``make bench``, that was a third of
the gateway's CPU per streamed request. ``HotPath`` matches the forwarded routes first and runs them
with only what they need: Parley's request context (request id, trace, metrics, access log) and the
same error rendering as the rest of the app. Every other request, and the lifespan, goes to FastAPI.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from fastapi import FastAPI
from parley_common.errors import ErrorRenderer
from parley_common.http import RequestContextMiddleware
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send


class HotPath:
    """ASGI app: ``routes`` served directly, everything else by ``app``."""

    def __init__(self, app: FastAPI, routes: Sequence[Route], *, service: str) -> None:
        self.app = app
        self.routes = tuple(routes)
        self.errors: ErrorRenderer = app.state.errors
        self.handle = RequestContextMiddleware(self._endpoint, service=service)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        wrong_method: Route | None = None
        for route in self.routes:
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                scope.update(child_scope)
                break
            if match is Match.PARTIAL and wrong_method is None:
                wrong_method = route
        else:
            if wrong_method is None:
                await self.app(scope, receive, send)
                return
            route = wrong_method
            scope["endpoint"] = _method_not_allowed(route)
        scope["route"] = route  # the metrics' and access log's route label
        scope["app"] = self.app  # handlers find the gateway's state at request.app.state
        await self.handle(scope, receive, send)

    async def _endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await scope["endpoint"](request)
        except Exception as exc:  # noqa: BLE001 - rendered as FastAPI's exception handlers would
            response = self.errors.for_exception(request, exc)
        await response(scope, receive, send)


def _method_not_allowed(route: Route) -> Callable[[Request], Awaitable[Response]]:
    allowed = ", ".join(sorted(route.methods or ()))

    async def refuse(_: Request) -> Response:
        raise HTTPException(405, headers={"allow": allowed})

    return refuse
