"""Model calls and their usage record.

Every call that reached the provider is recorded, in one transaction, as a ``completions`` row and a
``usage.tokens_consumed.v1`` event in the outbox, whether it completed, failed or was cut by the client.
Streams ask the provider for usage in their last chunk; when that never arrives (the client left first),
usage is estimated from what was generated and flagged ``estimated``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import openai
from openai import AsyncOpenAI
from parley_common.auth.internal import InternalIdentity
from parley_common.errors import Problem, openai_error_body
from parley_common.events import TokensConsumedV1
from parley_common.logs import get_logger
from parley_common.telemetry import inject_context
from parley_common.tokens import count_text_tokens, estimate_prompt_tokens
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from parley_chat.config import Settings
from parley_chat.models import Completion, OutboxMessage
from parley_chat.schemas import ChatCompletionRequest

log = get_logger(__name__)


@dataclass
class CallOutcome:
    """What one provider call produced, as far as it got."""

    model: str
    status: str = "completed"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False
    generated: list[str] = field(default_factory=list)


def provider_problem(exc: openai.APIError) -> Problem:
    """Map a provider failure to what our caller sees (never the provider's own credentials problem)."""
    if isinstance(exc, openai.APITimeoutError):
        return Problem(504, "upstream_timeout", "The model provider did not answer in time.")
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code == 400:
            return Problem(400, "invalid_request_error", _provider_message(exc))
        if exc.status_code == 404:
            return Problem(404, "model_not_found", _provider_message(exc))
        return Problem(502, "upstream_error", f"The model provider failed (status {exc.status_code}).")
    return Problem(502, "upstream_unavailable", "The model provider could not be reached.")


def _provider_message(exc: openai.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    message = body.get("message") if isinstance(body.get("message"), str) else None
    return message or "The model provider refused the request."


class CompletionService:
    def __init__(
        self, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], client: AsyncOpenAI
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.client = client
        self.provider = settings.provider_name

    def resolve_model(self, body: ChatCompletionRequest, caller: InternalIdentity) -> str:
        plan = caller.plan
        requested = body.model or plan.default_model or self.settings.default_model
        if plan.allowed_models and requested not in plan.allowed_models:
            raise Problem(
                404,
                "model_not_found",
                f"The model `{requested}` is not available on your plan.",
                param="model",
            )
        return plan.model_routes.get(requested, requested)

    def _headers(self, request_id: str) -> dict[str, str]:
        headers = {"x-request-id": request_id}
        inject_context(headers)
        return headers

    async def complete(
        self, body: ChatCompletionRequest, caller: InternalIdentity, request_id: str
    ) -> dict[str, Any]:
        outcome = CallOutcome(model=self.resolve_model(body, caller))
        try:
            response = await self.client.chat.completions.create(
                model=outcome.model,
                messages=body.message_dicts(),  # type: ignore[arg-type]
                extra_headers=self._headers(request_id),
                **body.provider_params(),
            )
        except openai.APIError as exc:
            outcome.status = "failed"
            await self.record(caller, request_id, outcome)
            raise provider_problem(exc) from None
        if response.usage is not None:
            outcome.prompt_tokens = response.usage.prompt_tokens
            outcome.completion_tokens = response.usage.completion_tokens
        else:
            outcome.estimated = True
            outcome.prompt_tokens = estimate_prompt_tokens(body.message_dicts())
            outcome.completion_tokens = sum(
                count_text_tokens(c.message.content or "") for c in response.choices
            )
        await self.record(caller, request_id, outcome)
        return response.model_dump(mode="json", exclude_unset=True)

    async def stream(
        self, body: ChatCompletionRequest, caller: InternalIdentity, request_id: str
    ) -> AsyncIterator[bytes]:
        """Open the provider stream before the response starts, so an early failure is a plain HTTP error."""
        outcome = CallOutcome(model=self.resolve_model(body, caller))
        try:
            upstream = await self.client.chat.completions.create(  # type: ignore[call-overload]
                model=outcome.model,
                messages=body.message_dicts(),  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
                extra_headers=self._headers(request_id),
                **body.provider_params(),
            )
        except openai.APIError as exc:
            outcome.status = "failed"
            await self.record(caller, request_id, outcome)
            raise provider_problem(exc) from None
        return self._relay(upstream, body, caller, request_id, outcome)

    async def _relay(
        self,
        upstream: Any,
        body: ChatCompletionRequest,
        caller: InternalIdentity,
        request_id: str,
        outcome: CallOutcome,
    ) -> AsyncIterator[bytes]:
        usage_seen = False
        try:
            async for chunk in upstream:
                if chunk.usage is not None:
                    usage_seen = True
                    outcome.prompt_tokens = chunk.usage.prompt_tokens
                    outcome.completion_tokens = chunk.usage.completion_tokens
                    if not chunk.choices and not body.wants_usage_chunk:
                        continue  # the caller did not ask for the usage chunk
                for choice in chunk.choices:
                    if choice.delta and choice.delta.content:
                        outcome.generated.append(choice.delta.content)
                yield b"data: " + chunk.model_dump_json(exclude_unset=True).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
        except openai.APIError as exc:
            outcome.status = "failed"
            log.warning("completion.stream_failed", error=type(exc).__name__)
            error = openai_error_body(502, "upstream_error", "The model provider failed mid-stream.")
            yield b"data: " + _json(error) + b"\n\n"
        except BaseException:
            # The client went away (the task is cancelled) or the server is stopping.
            outcome.status = "cancelled"
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await upstream.close()
                if not usage_seen:
                    outcome.estimated = True
                    outcome.prompt_tokens = estimate_prompt_tokens(body.message_dicts())
                    outcome.completion_tokens = count_text_tokens("".join(outcome.generated))
                await self.record(caller, request_id, outcome)

    async def record(self, caller: InternalIdentity, request_id: str, outcome: CallOutcome) -> None:
        """The completion row and its usage event, in one transaction."""
        event = TokensConsumedV1(
            source="chat",
            subject=str(caller.user_id),
            region=self.settings.region,
            user_id=caller.user_id,
            api_key_id=caller.api_key_id,
            request_id=request_id,
            model=outcome.model,
            provider=self.provider,
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            status=outcome.status,  # type: ignore[arg-type]
            estimated=outcome.estimated,
        )
        async with self.sessionmaker.begin() as session:
            session.add(
                Completion(
                    user_id=caller.user_id,
                    request_id=request_id,
                    model=outcome.model,
                    provider=self.provider,
                    status=outcome.status,
                    prompt_tokens=outcome.prompt_tokens,
                    completion_tokens=outcome.completion_tokens,
                )
            )
            session.add(OutboxMessage.from_event(event))
        log.info(
            "completion.recorded",
            status=outcome.status,
            model=outcome.model,
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            estimated=outcome.estimated,
            event_id=str(event.id),
        )


def _json(value: Any) -> bytes:
    import json

    return json.dumps(value, separators=(",", ":")).encode()
