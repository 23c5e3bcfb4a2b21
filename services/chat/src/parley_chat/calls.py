"""Calling providers: retries with backoff and jitter, fallback to the next provider, raw SSE streams.

A call is tried on each provider of its route in order. 429, 5xx, timeouts and connection failures are
retried on the same provider within its budget (waiting ``min(cap, base·2^attempt)`` scaled by a random
factor, or the provider's ``Retry-After`` when that is shorter than the cap), then the next provider is
tried. A 400 is the caller's mistake and ends the call at once; 401/403/404 skip to the next provider.

A stream counts as open only once its first event has arrived, so every retry and fallback happens
before the client has seen a byte; after that nothing is retried. Stream bodies are not parsed into SDK
objects: :class:`ProviderStream` splits the raw bytes into SSE events and callers forward them as they are.

Requests go through the provider's ``AsyncOpenAI`` client (its base URL, key, headers, timeouts, typed
status errors) with ``client.post`` rather than ``chat.completions.create``: the typed method re-walks
every message against the SDK's TypedDicts, which cost more CPU than the rest of opening a stream
(measured with py-spy under 500 concurrent streams), and the body here is already validated.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import httpx2
import openai
from openai._constants import RAW_RESPONSE_HEADER
from parley_common.errors import Problem
from parley_common.logs import get_logger
from prometheus_client import Counter

from parley_chat.providers import Provider, Route

log = get_logger(__name__)

T = TypeVar("T")

PROVIDER_ATTEMPTS = Counter(
    "parley_chat_provider_attempts_total", "Calls made to providers, by outcome", ["provider", "outcome"]
)

# Failures worth trying again on the same provider.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    openai.APITimeoutError,
    openai.APIConnectionError,
    httpx2.TimeoutException,
    httpx2.TransportError,
)


class ProviderStreamError(Exception):
    """The provider sent an error event, or ended the stream before finishing."""


RETRYABLE: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, ProviderStreamError)
# Failures of a stream once it is open (the body broke, the provider sent an error or garbled JSON).
STREAM_ERRORS: tuple[type[BaseException], ...] = (
    openai.APIError,
    httpx2.HTTPError,
    httpx2.StreamError,
    ProviderStreamError,
    ValueError,
)


class ProviderStream:
    """An open streamed answer, read as raw SSE events (the bytes of each event's data)."""

    def __init__(self, provider: Provider, response: httpx2.Response) -> None:
        self.provider = provider
        self.response = response
        self._chunks = response.aiter_bytes()
        self._buffer = b""
        self._peeked: bytes | None = None
        self._eof = False

    async def _read_event(self) -> bytes | None:
        while True:
            end = self._buffer.find(b"\n\n")
            if end >= 0:
                block, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
                event = _parse_block(block)
                if event is not None:
                    return event
                continue
            if self._eof:
                rest, self._buffer = self._buffer, b""
                return _parse_block(rest) if rest.strip() else None
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                self._eof = True
                continue
            self._buffer += chunk
            if b"\r" in self._buffer:
                self._buffer = self._buffer.replace(b"\r\n", b"\n")

    async def peek(self) -> bytes:
        """Wait for the first event (what decides whether the stream opened)."""
        event = await self._read_event()
        if event is None:
            raise ProviderStreamError("the provider closed the stream before sending anything")
        if event.startswith(b"{") and b'"error"' in event and "error" in json.loads(event):
            raise ProviderStreamError("the provider answered with an error event")
        self._peeked = event
        return event

    async def next_event(self) -> bytes | None:
        if self._peeked is not None:
            event, self._peeked = self._peeked, None
            return event
        return await self._read_event()

    async def aclose(self) -> None:
        """Close the connection now: the provider sees the call cancelled."""
        with anyio.CancelScope(shield=True):
            await self.response.aclose()
            try:
                await self._chunks.aclose()
            except RuntimeError:
                pass  # still running in the task that was cancelled; closing the response ended it


def _parse_block(block: bytes) -> bytes | None:
    # The common case, one "data: {...}" line, without splitting.
    if block.startswith(b"data: ") and b"\n" not in block:
        return block[6:]
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(data) if data else None  # comments and bare event/id lines carry nothing


@dataclass
class CallFailed(Exception):
    """No provider could answer; ``problem`` is what the client sees, ``provider`` the last one tried."""

    problem: Problem
    provider: str


def _retry_after(exc: BaseException) -> float | None:
    if not isinstance(exc, openai.APIStatusError):
        return None
    headers = exc.response.headers
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) / scale)
            except ValueError:
                return None
    return None


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    return isinstance(exc, RETRYABLE)


def _provider_message(exc: openai.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    message = body.get("message")
    return message if isinstance(message, str) and message else "The model provider refused the request."


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, openai.APIStatusError):
        return str(exc.status_code)
    if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException):
        return "timeout"
    return "connection" if isinstance(exc, TRANSIENT_ERRORS) else "stream_error"


def final_problem(exc: BaseException) -> Problem:
    """What the client sees when every provider failed (never the provider's own credentials problem)."""
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status == 404:
            return Problem(404, "model_not_found", _provider_message(exc), param="model")
        if status == 429:
            return Problem(
                503,
                "upstream_overloaded",
                "The model provider is over capacity; try again shortly.",
                headers={"retry-after": "1"},
            )
        return Problem(502, "upstream_error", f"The model provider failed (status {status}).")
    if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException):
        return Problem(504, "upstream_timeout", "The model provider did not answer in time.")
    if isinstance(exc, ProviderStreamError):
        return Problem(502, "upstream_error", "The model provider failed before answering.")
    return Problem(502, "upstream_unavailable", "The model provider could not be reached.")


class ProviderCaller:
    def __init__(self, backoff_base: float, backoff_max: float) -> None:
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max

    def _delay(self, attempt: int, exc: BaseException) -> float | None:
        """Seconds before the next try on the same provider; None when waiting is not worth it."""
        hinted = _retry_after(exc)
        if hinted is not None:
            return hinted if hinted <= self.backoff_max else None
        return random.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt))

    async def _with_fallback(
        self, route: Route, attempt: Callable[[Provider], Awaitable[T]]
    ) -> tuple[Provider, T]:
        last: BaseException | None = None
        provider = route.providers[0]
        for provider in route.providers:
            for tries in range(provider.max_retries + 1):
                try:
                    result = await attempt(provider)
                except openai.APIStatusError as exc:
                    if exc.status_code in (400, 413, 422):
                        PROVIDER_ATTEMPTS.labels(provider.name, str(exc.status_code)).inc()
                        code = exc.code if isinstance(exc.code, str) else "invalid_request_error"
                        raise CallFailed(Problem(400, code, _provider_message(exc)), provider.name) from None
                    last = exc
                except RETRYABLE as exc:
                    last = exc
                else:
                    PROVIDER_ATTEMPTS.labels(provider.name, "ok").inc()
                    return provider, result
                PROVIDER_ATTEMPTS.labels(provider.name, _outcome(last)).inc()
                log.warning(
                    "provider.attempt_failed",
                    provider=provider.name,
                    model=route.model,
                    attempt=tries + 1,
                    error=_outcome(last),
                )
                if not _is_transient(last) or tries == provider.max_retries:
                    break
                delay = self._delay(tries, last)
                if delay is None:
                    break
                await asyncio.sleep(delay)
        assert last is not None
        raise CallFailed(final_problem(last), provider.name)

    async def _send(
        self, provider: Provider, payload: dict[str, Any], headers: dict[str, str]
    ) -> httpx2.Response:
        """POST the request; the response comes back unread (a 4xx/5xx raises ``openai.APIStatusError``)."""
        response: httpx2.Response = await provider.client.post(
            "/chat/completions",
            cast_to=httpx2.Response,
            body=payload,
            options={"headers": {RAW_RESPONSE_HEADER: "stream", **headers}},
        )
        return response

    async def complete(
        self, route: Route, messages: list[dict[str, Any]], params: dict[str, Any], headers: dict[str, str]
    ) -> tuple[Provider, dict[str, Any]]:
        """A non-streamed answer as the provider's JSON body."""
        payload = {**params, "model": route.model, "messages": messages}

        async def attempt(provider: Provider) -> dict[str, Any]:
            response = await self._send(provider, payload, headers)
            try:
                raw = await response.aread()
            finally:
                await response.aclose()
            try:
                body: dict[str, Any] = json.loads(raw)
            except ValueError:
                raise ProviderStreamError("the provider answered with something that is not JSON") from None
            return body

        return await self._with_fallback(route, attempt)

    async def open_stream(
        self, route: Route, messages: list[dict[str, Any]], params: dict[str, Any], headers: dict[str, str]
    ) -> ProviderStream:
        """A stream whose first event has arrived; usage is asked for in its last chunk."""
        payload = {
            **params,
            "model": route.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }

        async def attempt(provider: Provider) -> ProviderStream:
            stream = ProviderStream(provider, await self._send(provider, payload, headers))
            try:
                await stream.peek()
            except BaseException:
                await stream.aclose()
                raise
            return stream

        _, stream = await self._with_fallback(route, attempt)
        return stream
