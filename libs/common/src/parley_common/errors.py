"""Error responses: RFC 9457 problem+json for Parley's routes, OpenAI's shape for OpenAI-compatible ones.

Handlers decide by path: routes that mirror OpenAI's API (``/v1/chat/completions``, ``/v1/models``, …)
answer ``{"error": {"message", "type", "code", "param"}}`` so the official SDK raises its typed
exceptions; everything else answers ``application/problem+json``. Unexpected exceptions become a 500 that
reveals nothing but the request id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from parley_common.logs import get_logger

PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE_BASE = "https://parley.dev/problems/"

log = get_logger(__name__)

# OpenAI's error "type" per status, as its API sends them (the SDK maps by status; clients read "type").
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_exceeded",
    503: "server_error",
}


class Problem(Exception):
    """An error with an HTTP status, rendered as problem+json (or OpenAI's shape on OpenAI routes).

    ``code`` is a stable machine-readable slug (``"conversation_not_found"``); it is the last segment of
    the problem ``type`` URI and the ``code`` of an OpenAI-shaped error.
    """

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        title: str | None = None,
        headers: Mapping[str, str] | None = None,
        param: str | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.headers = dict(headers or {})
        self.param = param
        self.extensions = extensions


def problem_body(
    status: int,
    code: str,
    detail: str,
    *,
    title: str | None = None,
    instance: str | None = None,
    **extensions: Any,
) -> dict[str, Any]:
    """An RFC 9457 problem details object."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extensions)
    return body


def openai_error_body(
    status: int, code: str | None, message: str, *, param: str | None = None
) -> dict[str, Any]:
    """OpenAI's error envelope."""
    return {
        "error": {
            "message": message,
            "type": _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }


class ErrorRenderer:
    """Renders an error in the shape the route's clients expect."""

    def __init__(self, openai_prefixes: Iterable[str]) -> None:
        self.openai_prefixes = tuple(openai_prefixes)

    def is_openai(self, path: str) -> bool:
        return path.startswith(self.openai_prefixes)

    def render(
        self,
        request: Request,
        status: int,
        code: str,
        detail: str,
        *,
        title: str | None = None,
        headers: Mapping[str, str] | None = None,
        param: str | None = None,
        **extensions: Any,
    ) -> JSONResponse:
        if self.is_openai(request.url.path):
            return JSONResponse(
                openai_error_body(status, code, detail, param=param),
                status_code=status,
                headers=dict(headers or {}),
            )
        body = problem_body(status, code, detail, title=title, instance=request.url.path, **extensions)
        request_id = request.headers.get("x-request-id")
        if request_id:
            body["request_id"] = request_id
        return JSONResponse(body, status_code=status, headers=dict(headers or {}), media_type=PROBLEM_JSON)

    def for_exception(self, request: Request, exc: Exception) -> JSONResponse:
        """The response for an exception a route raised: its own status for the ones Parley and
        Starlette raise on purpose, 400/422 for invalid input, and for anything else a logged 500 that
        reveals nothing but the request id."""
        if isinstance(exc, Problem):
            return self.render(
                request,
                exc.status,
                exc.code,
                exc.detail,
                title=exc.title,
                headers=exc.headers,
                param=exc.param,
                **exc.extensions,
            )
        if isinstance(exc, StarletteHTTPException):
            code = {404: "not_found", 405: "method_not_allowed"}.get(
                exc.status_code, f"http_{exc.status_code}"
            )
            detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
            return self.render(request, exc.status_code, code, detail, headers=exc.headers)
        if isinstance(exc, RequestValidationError):
            detail, param, cleaned = _validation_detail(list(exc.errors()))
            # OpenAI answers 400 for a malformed request; problem+json routes use 422 with the full list.
            if self.is_openai(request.url.path):
                return self.render(request, 400, "invalid_request_error", detail, param=param)
            return self.render(request, 422, "validation_error", detail, errors=cleaned)
        log.exception("http.unhandled_error", path=request.url.path)
        return self.render(request, 500, "internal_error", "The server failed to handle this request.")


def _validation_detail(errors: list[dict[str, Any]]) -> tuple[str, str | None, list[dict[str, Any]]]:
    cleaned = [
        {
            "loc": [str(part) for part in err.get("loc", ())],
            "msg": err.get("msg", ""),
            "type": err.get("type", ""),
        }
        for err in errors
    ]
    first = cleaned[0] if cleaned else {"loc": [], "msg": "invalid request"}
    loc = [part for part in first["loc"] if part not in ("body", "query", "path", "header")]
    param = ".".join(loc) or None
    detail = f"{param}: {first['msg']}" if param else str(first["msg"])
    return detail, param, cleaned


def install_error_handlers(app: FastAPI, *, openai_prefixes: Iterable[str] = ()) -> ErrorRenderer:
    """Register the handlers on ``app``; returns the renderer for code that builds errors by hand."""
    renderer = ErrorRenderer(openai_prefixes)

    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        return renderer.for_exception(request, exc)

    for kind in (Problem, StarletteHTTPException, RequestValidationError, Exception):
        app.add_exception_handler(kind, on_error)
    return renderer
