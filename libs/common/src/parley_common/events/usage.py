"""Events about metered model usage."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from pydantic import Field, NonNegativeInt

from parley_common.events.envelope import Event


class TokensConsumedV1(Event):
    """Emitted by chat for every model call (completed, cancelled, failed or served from cache)."""

    type: Literal["usage.tokens_consumed.v1"] = "usage.tokens_consumed.v1"
    user_id: UUID
    request_id: str = Field(description="The HTTP request that made the call")
    model: str = Field(description="The model that answered (after routing)")
    provider: str = Field(description="The provider that answered, or 'cache'")
    prompt_tokens: NonNegativeInt
    completion_tokens: NonNegativeInt
    status: Literal["completed", "cancelled", "failed"] = "completed"
    cached: bool = Field(False, description="Served from the response cache; no provider call")
    estimated: bool = Field(
        False, description="Counts estimated locally because the provider's figure never came"
    )
    conversation_id: UUID | None = None
    api_key_id: UUID | None = None
    plan: str | None = Field(None, description="The caller's plan when the call was made")
    daily_token_quota: int | None = Field(
        None, description="The plan's daily token quota then (None: unlimited)"
    )
    monthly_token_quota: int | None = Field(
        None, description="The plan's monthly token quota then (None: unlimited)"
    )
