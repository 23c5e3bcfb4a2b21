"""Events about token quotas."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from pydantic import AwareDatetime, Field, NonNegativeInt, PositiveInt

from parley_common.events.envelope import Event


class QuotaThresholdCrossedV1(Event):
    """Emitted by usage, once per user, quota period and threshold, when consumption crosses 80 % or 100 %."""

    type: Literal["quota.threshold_crossed.v1"] = "quota.threshold_crossed.v1"
    user_id: UUID
    period: Literal["day", "month"]
    period_start: AwareDatetime
    threshold_percent: Literal[80, 100]
    quota_tokens: PositiveInt
    used_tokens: NonNegativeInt
    plan: str | None = None


class PlanChangedV1(Event):
    """Emitted when a user's plan changes (admin action or a billing provider's webhook)."""

    type: Literal["plan.changed.v1"] = "plan.changed.v1"
    user_id: UUID
    plan: str = Field(max_length=50)
    previous_plan: str | None = None
    reason: Literal["admin", "billing", "system"] = "billing"
    external_ref: str | None = Field(None, description="The billing provider's event or subscription id")
