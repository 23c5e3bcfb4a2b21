"""Response shapes of the usage API."""

from __future__ import annotations

from datetime import date
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

GroupBy = Literal["day", "model"]


class UsageFigures(BaseModel):
    """Tokens and requests of one group (or of the whole range)."""

    model_config = ConfigDict(frozen=True)

    prompt_tokens: int = Field(description="Tokens in")
    completion_tokens: int = Field(description="Tokens out")
    total_tokens: int
    requests: int = Field(description="Model calls (completed, cancelled or failed)")
    cached_requests: int = Field(description="Calls answered from the response cache")
    estimated_requests: int = Field(description="Calls whose tokens were estimated, not reported")
    cached_share: float = Field(description="cached_requests / requests (0 when there are none)")
    estimated_share: float = Field(description="estimated_requests / requests (0 when there are none)")
    cached_tokens: int = Field(description="Tokens of the cached calls")
    estimated_tokens: int = Field(description="Tokens of the estimated calls")


class UsageGroup(UsageFigures):
    day: date | None = Field(None, description="The UTC day (group_by=day)")
    model: str | None = Field(None, description="The model (group_by=model)")


class UsageReport(BaseModel):
    """A user's usage over a range of UTC days, from the daily rollups (which the ledger feeds)."""

    object: Literal["usage"] = "usage"
    user_id: UUID
    from_: date = Field(alias="from", serialization_alias="from")
    to: date
    group_by: GroupBy
    data: list[UsageGroup]
    total: UsageFigures

    model_config = ConfigDict(populate_by_name=True)


class DriftDay(BaseModel):
    day: date
    provider: str
    provider_tokens: int = Field(description="Tokens the provider reports for the day")
    ledger_tokens: int = Field(description="Tokens in the ledger for that provider and day")
    drift_tokens: int = Field(description="provider_tokens - ledger_tokens")
    drift_ratio: float | None = Field(description="drift_tokens / ledger_tokens (None without ledger tokens)")


class DriftReport(BaseModel):
    object: Literal["usage.drift"] = "usage.drift"
    from_: date = Field(alias="from", serialization_alias="from")
    to: date
    data: list[DriftDay]

    model_config = ConfigDict(populate_by_name=True)
