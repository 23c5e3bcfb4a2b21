"""Model calls and their usage record.

Every call is recorded, in one transaction, as a ``completions`` row and a ``usage.tokens_consumed.v1``
event in the outbox, whether it completed, failed, was cut by the client or came from the cache; callers
(conversations) add their own rows to that same transaction through a ``finisher``.

Streams ask the provider for usage in their last chunk; when that never arrives (the client left first,
or the stream broke), usage is estimated from what was generated and flagged ``estimated``. Provider
chunks are forwarded as the bytes that arrived, parsed only to follow content and usage.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import anyio
from parley_common.auth.internal import InternalIdentity
from parley_common.errors import openai_error_body
from parley_common.events import TokensConsumedV1
from parley_common.logs import get_logger
from parley_common.telemetry import inject_context
from parley_common.tokens import count_text_tokens, estimate_prompt_tokens
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from parley_chat.cache import ResponseCache, cache_key
from parley_chat.calls import STREAM_ERRORS, CallFailed, ProviderCaller, ProviderStreamError
from parley_chat.config import Settings
from parley_chat.models import Completion, OutboxMessage
from parley_chat.providers import Route, Router
from parley_chat.schemas import ChatCompletionRequest
from parley_chat.semantic import SemanticIndex, SemanticQuery, semantic_query

log = get_logger(__name__)

USAGE_HEADER = "x-parley-usage"  # set by the gateway: report usage whatever the client asked
# On responses: hit | semantic-hit | miss (absent when the request was not cacheable).
CACHE_HEADER = "x-parley-cache"

CacheStatus = Literal["hit", "semantic-hit", "miss"] | None


@dataclass
class Call:
    """One model call about to be made on a caller's behalf."""

    caller: InternalIdentity
    request_id: str
    route: Route
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    usage_chunk: bool  # end a stream with the usage chunk (the client asked, or the gateway settles with it)
    cache_key: str | None = None
    semantic: SemanticQuery | None = None  # the plan's cache policy is semantic
    conversation_id: uuid.UUID | None = None


@dataclass
class Outcome:
    """What a call produced, as far as it got."""

    model: str
    provider: str
    status: Literal["completed", "cancelled", "failed"] = "completed"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False
    cached: bool = False
    finish_reason: str | None = None
    message: dict[str, Any] | None = None  # the assistant message of a non-streamed answer
    generated: list[str] = field(default_factory=list)  # streamed content, as it arrived
    tool_calls: bool = False

    @property
    def text(self) -> str:
        if self.message is not None:
            content = self.message.get("content")
            return content if isinstance(content, str) else ""
        return "".join(self.generated)

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


Finisher = Callable[[AsyncSession, Outcome], Awaitable[None]]


class EventSource(Protocol):
    async def next_event(self) -> bytes | None: ...

    async def aclose(self) -> None: ...


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


class CachedAnswer:
    """A cached answer replayed as the events a provider would have streamed."""

    def __init__(self, entry: dict[str, Any]) -> None:
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        base = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": entry["model"],
            "system_fingerprint": entry.get("system_fingerprint"),
        }
        message = entry["message"]

        def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            return json.dumps({**base, "choices": [choice]}, separators=(",", ":")).encode()

        self._events = [
            chunk({"role": "assistant", "content": ""}, None),
            chunk({"content": message.get("content") or ""}, None),
            chunk({}, entry.get("finish_reason") or "stop"),
            json.dumps({**base, "choices": [], "usage": entry["usage"]}, separators=(",", ":")).encode(),
        ]

    async def next_event(self) -> bytes | None:
        return self._events.pop(0) if self._events else None

    async def aclose(self) -> None:
        self._events.clear()


def cached_body(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": entry["model"],
        "choices": [
            {
                "index": 0,
                "message": entry["message"],
                "finish_reason": entry.get("finish_reason"),
                "logprobs": None,
            }
        ],
        "usage": entry["usage"],
        "system_fingerprint": entry.get("system_fingerprint"),
    }


class CompletionService:
    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        router: Router,
        cache: ResponseCache | None,
        semantic: SemanticIndex | None = None,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.router = router
        self.cache = cache
        self.semantic = semantic
        self.caller = ProviderCaller(settings.retry_backoff_base, settings.retry_backoff_max)

    # -- preparing a call -------------------------------------------------------------------------------

    def prepare(
        self,
        body: ChatCompletionRequest,
        caller: InternalIdentity,
        request_id: str,
        *,
        usage_header: bool,
        messages: list[dict[str, Any]] | None = None,
        route: Route | None = None,
    ) -> Call:
        route = route or self.router.resolve(body.model, caller)
        messages = messages if messages is not None else body.message_dicts()
        params = body.provider_params()
        call = Call(
            caller=caller,
            request_id=request_id,
            route=route,
            messages=messages,
            params=params,
            usage_chunk=body.wants_usage_chunk or usage_header,
        )
        if self._cacheable(body, caller):
            call.cache_key = cache_key(
                self.settings.redis_key_prefix, caller.user_id, route.model, messages, params
            )
            if caller.plan.cache == "semantic" and self.semantic is not None:
                call.semantic = semantic_query(
                    self.settings.redis_key_prefix, caller.user_id, route.model, messages, params
                )
        return call

    def _cacheable(self, body: ChatCompletionRequest, caller: InternalIdentity) -> bool:
        """The plan allows caching, and the request is deterministic (temperature 0) or opted in."""
        if self.cache is None or caller.plan.cache == "off" or body.parley_cache is False:
            return False
        return body.temperature == 0 or body.parley_cache is True

    def _headers(self, request_id: str) -> dict[str, str]:
        headers = {"x-request-id": request_id}
        inject_context(headers)
        return headers

    # -- non-streamed ---------------------------------------------------------------------------------

    async def complete(
        self, call: Call, finisher: Finisher | None = None
    ) -> tuple[dict[str, Any], CacheStatus]:
        entry, status = await self._lookup(call)
        if entry is not None:
            outcome = self._cached_outcome(call, entry)
            outcome.message = entry["message"]
            await self.record(call, outcome, finisher)
            return cached_body(entry), status
        outcome = Outcome(model=call.route.model, provider=call.route.providers[0].name)
        try:
            provider, body = await self.caller.complete(
                call.route, call.messages, call.params, self._headers(call.request_id)
            )
        except CallFailed as failure:
            outcome.status, outcome.provider = "failed", failure.provider
            await self.record(call, outcome, finisher)
            raise failure.problem from None
        outcome.provider = provider.name
        choices = body.get("choices") or [{}]
        outcome.message = choices[0].get("message") or {}
        outcome.finish_reason = choices[0].get("finish_reason")
        usage = body.get("usage")
        if isinstance(usage, dict) and "prompt_tokens" in usage:
            outcome.prompt_tokens = int(usage["prompt_tokens"])
            outcome.completion_tokens = int(usage.get("completion_tokens") or 0)
        else:
            self._estimate(call, outcome)
            body["usage"] = outcome.usage()  # the gateway settles quotas with it
        await self.record(call, outcome, finisher)
        if call.cache_key:
            await self._store(
                call, outcome, body.get("model") or call.route.model, body.get("system_fingerprint")
            )
        return body, status

    # -- streamed -------------------------------------------------------------------------------------

    async def stream(
        self, call: Call, finisher: Finisher | None = None
    ) -> tuple[AsyncIterator[bytes], CacheStatus]:
        """Open the stream before the response starts, so a failure to open is a plain HTTP error."""
        entry, status = await self._lookup(call)
        if entry is not None:
            outcome = self._cached_outcome(call, entry)
            return self._relay(call, CachedAnswer(entry), outcome, finisher, store=False), status
        outcome = Outcome(model=call.route.model, provider=call.route.providers[0].name)
        try:
            source = await self.caller.open_stream(
                call.route, call.messages, call.params, self._headers(call.request_id)
            )
        except CallFailed as failure:
            outcome.status, outcome.provider = "failed", failure.provider
            await self.record(call, outcome, finisher)
            raise failure.problem from None
        outcome.provider = source.provider.name
        return self._relay(call, source, outcome, finisher, store=bool(call.cache_key)), status

    async def _relay(
        self, call: Call, source: EventSource, outcome: Outcome, finisher: Finisher | None, *, store: bool
    ) -> AsyncIterator[bytes]:
        usage_seen = outcome.cached
        usage_event: bytes | None = None
        first: dict[str, Any] | None = None
        done = recorded = False

        async def settle() -> None:
            nonlocal recorded
            recorded = True  # once: if it fails, the stream ends without [DONE] and the error is logged
            # Shielded: a disconnect arriving now must not leave the turn half-recorded.
            with anyio.CancelScope(shield=True):
                await self.record(call, outcome, finisher)

        try:
            try:
                while (event := await source.next_event()) is not None:
                    if event == b"[DONE]":
                        break
                    chunk = json.loads(event)
                    if not isinstance(chunk, dict) or "error" in chunk:
                        raise ProviderStreamError("the provider sent an error (or garbage) mid-stream")
                    first = first or chunk
                    usage = chunk.get("usage")
                    if usage:
                        usage_seen = True
                        outcome.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                        outcome.completion_tokens = int(usage.get("completion_tokens") or 0)
                    choices = chunk.get("choices")
                    if not choices and usage:
                        usage_event = event  # sent at the end, when the usage chunk is wanted
                        continue
                    for choice in choices or ():
                        delta = choice.get("delta") or {}
                        if content := delta.get("content"):
                            outcome.generated.append(content)
                        for tool_call in delta.get("tool_calls") or ():
                            outcome.tool_calls = True
                            outcome.generated.append((tool_call.get("function") or {}).get("arguments") or "")
                        if reason := choice.get("finish_reason"):
                            outcome.finish_reason = reason
                    yield b"data: " + event + b"\n\n"
                if outcome.finish_reason is None:
                    raise ProviderStreamError("the provider ended the stream before finishing")
            except STREAM_ERRORS as exc:
                # Never retried: the client has already seen part of the answer.
                outcome.status = "failed"
                log.warning("completion.stream_failed", provider=outcome.provider, error=type(exc).__name__)
                await source.aclose()
                if not usage_seen:
                    self._estimate(call, outcome)
                await settle()
                if call.usage_chunk:
                    yield _sse(self._usage_chunk(first, outcome))
                yield _sse(openai_error_body(502, "upstream_error", "The model provider failed mid-stream."))
                return
            done = True
            await source.aclose()
            if not usage_seen:
                self._estimate(call, outcome)
            # Recorded before the end is sent: a client that reads [DONE] and then lists the
            # conversation finds the reply there.
            await settle()
            if call.usage_chunk:
                yield (
                    b"data: " + usage_event + b"\n\n"
                    if usage_event
                    else _sse(self._usage_chunk(first, outcome))
                )
            yield DONE
        except BaseException:
            # The client went away (Starlette cancels the response task) or the server is stopping.
            if not done and outcome.status == "completed":
                outcome.status = "cancelled"
            raise
        finally:
            # Shielded: under cancellation every await here would otherwise be cancelled at once.
            with anyio.CancelScope(shield=True):
                await source.aclose()
                if not recorded:  # the client left (or the server is stopping) before the end
                    if not usage_seen and not outcome.estimated:
                        self._estimate(call, outcome)
                    await self.record(call, outcome, finisher)
                if store and done and outcome.status == "completed" and usage_seen and not outcome.tool_calls:
                    outcome.message = {"role": "assistant", "content": outcome.text}
                    await self._store(call, outcome, (first or {}).get("model") or call.route.model, None)

    # -- helpers --------------------------------------------------------------------------------------

    def _usage_chunk(self, first: dict[str, Any] | None, outcome: Outcome) -> dict[str, Any]:
        first = first or {}
        return {
            "id": first.get("id") or f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion.chunk",
            "created": first.get("created") or int(time.time()),
            "model": first.get("model") or outcome.model,
            "choices": [],
            "usage": outcome.usage(),
        }

    def _estimate(self, call: Call, outcome: Outcome) -> None:
        outcome.estimated = True
        outcome.prompt_tokens = estimate_prompt_tokens(call.messages)
        outcome.completion_tokens = count_text_tokens(outcome.text)

    def _cached_outcome(self, call: Call, entry: dict[str, Any]) -> Outcome:
        usage = entry.get("usage") or {}
        return Outcome(
            model=entry.get("model") or call.route.model,
            provider="cache",
            cached=True,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason=entry.get("finish_reason"),
        )

    async def _lookup(self, call: Call) -> tuple[dict[str, Any] | None, CacheStatus]:
        """The cached answer for this call (exact first, then semantic), and the cache status."""
        if not call.cache_key or self.cache is None:
            return None, None
        entry = await self.cache.get(call.cache_key)
        if entry is not None:
            return entry, "hit"
        if call.semantic is not None and self.semantic is not None:
            similar = await self.semantic.nearest(call.semantic)
            # The index only ever holds this user's keys; checked anyway, as every read is scoped.
            if similar is not None and similar.startswith(call.cache_key.rsplit(":", 1)[0] + ":"):
                entry = await self.cache.get(similar)
                if entry is not None:
                    return entry, "semantic-hit"
                await self.semantic.forget(call.semantic, similar)  # its answer has expired
        return None, "miss"

    async def _store(self, call: Call, outcome: Outcome, model: str, fingerprint: str | None) -> None:
        """Cache a finished answer (plain content, one choice, finished normally)."""
        if (
            self.cache is None
            or call.cache_key is None
            or outcome.estimated
            or outcome.finish_reason not in ("stop", "length")
            or outcome.message is None
            or outcome.message.get("tool_calls")
        ):
            return
        stored = await self.cache.set(
            call.cache_key,
            {
                "model": model,
                "message": outcome.message,
                "finish_reason": outcome.finish_reason,
                "usage": outcome.usage(),
                "system_fingerprint": fingerprint,
            },
        )
        if stored and call.semantic is not None and self.semantic is not None:
            await self.semantic.add(call.semantic, call.cache_key)

    async def record(self, call: Call, outcome: Outcome, finisher: Finisher | None = None) -> None:
        """The completion row and its usage event (plus the finisher's rows), in one transaction."""
        plan = call.caller.plan
        event = TokensConsumedV1(
            source="chat",
            subject=str(call.caller.user_id),
            region=self.settings.region,
            user_id=call.caller.user_id,
            api_key_id=call.caller.api_key_id,
            request_id=call.request_id,
            model=outcome.model,
            provider=outcome.provider,
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            status=outcome.status,
            cached=outcome.cached,
            estimated=outcome.estimated,
            conversation_id=call.conversation_id,
            plan=plan.name,
            daily_token_quota=plan.daily_token_quota,
            monthly_token_quota=plan.monthly_token_quota,
        )
        async with self.sessionmaker.begin() as session:
            session.add(
                Completion(
                    user_id=call.caller.user_id,
                    request_id=call.request_id,
                    model=outcome.model,
                    provider=outcome.provider,
                    status=outcome.status,
                    prompt_tokens=outcome.prompt_tokens,
                    completion_tokens=outcome.completion_tokens,
                    cached=outcome.cached,
                    estimated=outcome.estimated,
                    conversation_id=call.conversation_id,
                )
            )
            session.add(OutboxMessage.from_event(event))
            if finisher is not None:
                await finisher(session, outcome)
        log.info(
            "completion.recorded",
            status=outcome.status,
            model=outcome.model,
            provider=outcome.provider,
            cached=outcome.cached,
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            estimated=outcome.estimated,
            event_id=str(event.id),
        )
