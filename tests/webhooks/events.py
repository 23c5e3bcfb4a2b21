"""Event factories for the webhooks and notify tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from parley_common.events import (
    MessageCompletedV1,
    PlanChangedV1,
    QuotaThresholdCrossedV1,
    UserDeletedV1,
    UserRegisteredV1,
)


def message_completed(user_id: uuid.UUID) -> MessageCompletedV1:
    return MessageCompletedV1(
        source="chat",
        subject=str(user_id),
        user_id=user_id,
        conversation_id=uuid.uuid4(),
        message_id=uuid.uuid4(),
        model="gpt-4o-mini",
        finish_reason="stop",
        completion_tokens=12,
    )


def quota_crossed(user_id: uuid.UUID, percent: int = 80) -> QuotaThresholdCrossedV1:
    return QuotaThresholdCrossedV1(
        source="usage",
        subject=str(user_id),
        user_id=user_id,
        period="day",
        period_start=datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0),
        threshold_percent=percent,  # type: ignore[arg-type]
        quota_tokens=10_000,
        used_tokens=percent * 100,
        plan="free",
    )


def plan_changed(user_id: uuid.UUID, plan: str = "pro") -> PlanChangedV1:
    return PlanChangedV1(source="gateway", subject=str(user_id), user_id=user_id, plan=plan, reason="admin")


def registered(user_id: uuid.UUID, email: str | None = None) -> UserRegisteredV1:
    return UserRegisteredV1(
        source="gateway",
        subject=str(user_id),
        user_id=user_id,
        email=email or f"user-{user_id.hex[:12]}@example.com",
    )


def deleted(user_id: uuid.UUID, email: str | None = None) -> UserDeletedV1:
    return UserDeletedV1(
        source="gateway",
        subject=str(user_id),
        user_id=user_id,
        email=email or f"user-{user_id.hex[:12]}@example.com",
    )
