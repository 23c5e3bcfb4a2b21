"""Erasing a deleted account (``user.deleted.v1``): everything webhooks holds of the user.

Three steps, each safe to repeat, so a redelivered event (or one whose worker died half-way) erases
nothing more and fails nothing:

1. Stop: in one transaction, the user's endpoints are disabled and their pending deliveries failed. From
   that commit on, nothing new starts: beat only claims pending rows, a ``webhooks.deliver`` task already
   in the queue finds its delivery finished (``stale``), and fan-out only picks enabled endpoints. No
   ``webhooks.endpoint_disabled.v1`` is written (the owner is gone).
2. Settle: attempts already out (their request sent before step 1) are waited for, up to one attempt's
   timeout, so that once the event is acknowledged no request to the user's endpoints is in flight.
3. Erase, in one transaction: the deliveries (their attempts go with them, ``ON DELETE CASCADE``), the
   endpoints (their secrets go with them), the plan billing last gave the user and every outbox row about
   the user (published or not: its consumers would drop an event about a deleted account anyway); the
   inbound billing events naming the user are redacted (user and payload removed; provider, event id,
   type and outcome stay, so a replay of the provider's event is still recognised).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Engine, delete, func, select, update

from parley_webhooks.models import (
    Attempt,
    BillingPlan,
    Delivery,
    Endpoint,
    EndpointSecret,
    InboundEvent,
    OutboxMessage,
)

DISABLED_REASON = "user_deleted"
SETTLE_POLL = 0.1


@dataclass(frozen=True)
class Erased:
    """What one erasure removed (all zero when the user had already been erased)."""

    endpoints: int
    secrets: int
    deliveries: int
    attempts: int
    billing_plans: int
    outbox: int
    inbound_redacted: int
    in_flight_waited: int
    settled: bool

    def log_fields(self) -> dict[str, Any]:
        return asdict(self)


def erase_user(engine: Engine, user_id: UUID, *, settle_timeout: float, lease: float) -> Erased:
    """Erase ``user_id``'s endpoints, deliveries and billing rows (see the module docstring)."""
    endpoint_ids = _stop(engine, user_id)
    in_flight, settled = _settle(engine, endpoint_ids, settle_timeout, lease)
    with engine.begin() as conn:
        counts = _erase(conn, user_id)
    return Erased(**counts, in_flight_waited=in_flight, settled=settled)


def _stop(engine: Engine, user_id: UUID) -> list[UUID]:
    with engine.begin() as conn:
        # Lock order as everywhere else: endpoints, then their delivery rows.
        endpoint_ids = list(
            conn.scalars(
                select(Endpoint.id).where(Endpoint.user_id == user_id).order_by(Endpoint.id).with_for_update()
            )
        )
        if not endpoint_ids:
            return []
        conn.execute(
            update(Endpoint)
            .where(Endpoint.id.in_(endpoint_ids), Endpoint.enabled.is_(True))
            .values(enabled=False, disabled_reason=DISABLED_REASON, disabled_at=func.now())
        )
        conn.execute(
            update(Delivery)
            .where(Delivery.endpoint_id.in_(endpoint_ids), Delivery.status == "pending")
            .values(
                status="failed",
                finished_at=func.now(),
                next_attempt_at=None,
                dispatch_token=None,
                last_error="the account was deleted",
            )
        )
    return endpoint_ids


def _in_flight(engine: Engine, endpoint_ids: Sequence[UUID], lease: float) -> int:
    with engine.connect() as conn:
        count = conn.scalar(
            select(func.count())
            .select_from(Attempt)
            .join(Delivery, Delivery.id == Attempt.delivery_id)
            .where(
                Delivery.endpoint_id.in_(endpoint_ids),
                Attempt.finished_at.is_(None),
                # Older than a lease: its worker died mid-request; nothing is coming back from it.
                Attempt.started_at > func.now() - timedelta(seconds=lease),
            )
        )
    return int(count or 0)


def _settle(engine: Engine, endpoint_ids: Sequence[UUID], timeout: float, lease: float) -> tuple[int, bool]:
    """(attempts that were in flight, whether they all finished in time)."""
    if not endpoint_ids:
        return 0, True
    first = pending = _in_flight(engine, endpoint_ids, lease)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        time.sleep(SETTLE_POLL)
        pending = _in_flight(engine, endpoint_ids, lease)
    return first, pending == 0


def _erase(conn: Connection, user_id: UUID) -> dict[str, int]:
    endpoint_ids = list(
        conn.scalars(
            select(Endpoint.id).where(Endpoint.user_id == user_id).order_by(Endpoint.id).with_for_update()
        )
    )
    # Deliveries by endpoint, and by user too (test sends and fan-outs both carry the owner's id).
    deliveries = select(Delivery.id).where(
        Delivery.endpoint_id.in_(endpoint_ids) | (Delivery.user_id == user_id)
    )
    attempts = conn.scalar(
        select(func.count()).select_from(Attempt).where(Attempt.delivery_id.in_(deliveries.scalar_subquery()))
    )
    secrets = conn.scalar(
        select(func.count()).select_from(EndpointSecret).where(EndpointSecret.endpoint_id.in_(endpoint_ids))
    )
    return {
        "attempts": int(attempts or 0),
        "secrets": int(secrets or 0),
        # Deliveries before endpoints, as an attempt locks them (a delivery, then its attempts); their
        # attempts, and the endpoints' secrets, go with them (ON DELETE CASCADE).
        "deliveries": _count(conn, delete(Delivery).where(Delivery.id.in_(deliveries.scalar_subquery()))),
        "endpoints": _count(conn, delete(Endpoint).where(Endpoint.id.in_(endpoint_ids))),
        "billing_plans": _count(conn, delete(BillingPlan).where(BillingPlan.user_id == user_id)),
        "outbox": _count(
            conn, delete(OutboxMessage).where(OutboxMessage.payload["user_id"].astext == str(user_id))
        ),
        "inbound_redacted": _count(
            conn,
            update(InboundEvent).where(InboundEvent.user_id == user_id).values(user_id=None, payload={}),
        ),
    }


def _count(conn: Connection, statement: Any) -> int:
    return int(getattr(conn.execute(statement), "rowcount", 0) or 0)
