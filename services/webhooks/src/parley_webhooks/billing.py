"""Inbound billing webhooks: a Stripe-style signed subscription event becomes ``plan.changed.v1``.

Contract with the billing provider (documented in the README):

- Header ``Stripe-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`` (several
  ``v1`` entries are accepted during a secret rotation); ``t`` must be within the tolerance of our clock.
- Body: an event ``{"id", "type", "created", "data": {"object": subscription}}`` with type
  ``customer.subscription.created|updated|deleted``. The subscription names the Parley user in
  ``metadata.parley_user_id`` and its price in ``items.data[0].price.id``; the price maps to a plan through
  ``PARLEY_BILLING_PRICE_PLANS``. Status ``active``/``trialing`` gives the mapped plan; ``deleted`` or
  status ``canceled``/``unpaid``/``incomplete_expired`` gives ``PARLEY_BILLING_FALLBACK_PLAN``.
- Each provider event id is applied once (a replay answers 200 and changes nothing); an event older than
  the last one applied for that user (by ``created``) is recorded but not applied.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from parley_common.events import PlanChangedV1
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from parley_webhooks.config import Settings
from parley_webhooks.models import BillingPlan, InboundEvent, OutboxMessage

PROVIDER = "billing"
SUBSCRIPTION_EVENTS = frozenset(
    {"customer.subscription.created", "customer.subscription.updated", "customer.subscription.deleted"}
)
ACTIVE = frozenset({"active", "trialing"})
ENDED = frozenset({"canceled", "unpaid", "incomplete_expired"})
# plan.changed.v1 ids derive from the provider's event id, so even a re-emission would deduplicate downstream.
_EVENT_NAMESPACE = uuid.UUID("6f6e5a52-5b55-4c1e-9d0f-0b8f5a3c2e11")


class SignatureError(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def sign(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def verify_signature(
    header: str | None, body: bytes, secret: str, tolerance: float, now: float | None = None
) -> None:
    """Raise :class:`SignatureError` unless ``header`` signs ``body`` with ``secret`` recently enough."""
    if not header:
        raise SignatureError("missing_signature", "The Stripe-Signature header is missing.")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1" and value:
            candidates.append(value)
    if timestamp is None or not candidates:
        raise SignatureError("invalid_signature", "The signature header is malformed.")
    expected = sign(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in candidates):
        raise SignatureError("invalid_signature", "No signature matches the payload.")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise SignatureError(
            "timestamp_out_of_tolerance", "The signed timestamp is too old or in the future."
        )


def _user_and_plan(payload: dict[str, Any], settings: Settings) -> tuple[UUID | None, str | None, str]:
    """(user, plan, outcome): the plan this event gives the user, or why it gives none."""
    if payload.get("type") not in SUBSCRIPTION_EVENTS:
        return None, None, "ignored_type"
    subscription = (payload.get("data") or {}).get("object") or {}
    try:
        user_id = UUID(str((subscription.get("metadata") or {}).get("parley_user_id")))
    except ValueError:
        return None, None, "ignored_no_user"
    status = subscription.get("status")
    if payload["type"] == "customer.subscription.deleted" or status in ENDED:
        return user_id, settings.billing_fallback_plan, "applied"
    if status not in ACTIVE:
        return user_id, None, "ignored_status"
    items = ((subscription.get("items") or {}).get("data")) or [{}]
    price = ((items[0] or {}).get("price") or {}).get("id")
    plan = settings.billing_price_plans.get(str(price))
    if plan is None:
        return user_id, None, "ignored_unknown_price"
    return user_id, plan, "applied"


async def apply_event(session: AsyncSession, payload: dict[str, Any], settings: Settings) -> str:
    """Record the provider event once and, when it changes a plan, write ``plan.changed.v1`` with it."""
    event_id = str(payload["id"])
    inserted = await session.scalar(
        insert(InboundEvent)
        .values(
            provider=PROVIDER,
            event_id=event_id,
            event_type=str(payload.get("type", ""))[:200],
            outcome="received",
            payload=payload,
        )
        .on_conflict_do_nothing(index_elements=["provider", "event_id"])
        .returning(InboundEvent.event_id)
    )
    if inserted is None:
        return "duplicate"
    user_id, plan, outcome = _user_and_plan(payload, settings)
    if user_id is not None and plan is not None:
        outcome = await _change_plan(session, event_id, payload, user_id, plan, settings)
    await session.execute(
        update(InboundEvent)
        .where(InboundEvent.provider == PROVIDER, InboundEvent.event_id == event_id)
        .values(outcome=outcome, user_id=user_id)
    )
    return outcome


async def _change_plan(
    session: AsyncSession,
    event_id: str,
    payload: dict[str, Any],
    user_id: UUID,
    plan: str,
    settings: Settings,
) -> str:
    created_raw = payload.get("created")
    created = (
        datetime.fromtimestamp(float(created_raw), UTC) if created_raw is not None else datetime.now(UTC)
    )
    current = await session.scalar(
        select(BillingPlan).where(BillingPlan.user_id == user_id).with_for_update()
    )
    if current is not None and current.event_created_at > created:
        return "stale"
    previous = current.plan if current is not None else None
    await session.execute(
        insert(BillingPlan)
        .values(user_id=user_id, plan=plan, event_id=event_id, event_created_at=created)
        .on_conflict_do_update(
            index_elements=["user_id"],
            set_={
                "plan": plan,
                "event_id": event_id,
                "event_created_at": created,
                "updated_at": datetime.now(UTC),
            },
        )
    )
    event = PlanChangedV1(
        id=uuid.uuid5(_EVENT_NAMESPACE, f"{PROVIDER}:{event_id}"),
        source="webhooks",
        subject=str(user_id),
        region=settings.region,
        user_id=user_id,
        plan=plan,
        previous_plan=previous,
        reason="billing",
        external_ref=event_id,
    )
    session.add(OutboxMessage.from_event(event))
    return "applied"
