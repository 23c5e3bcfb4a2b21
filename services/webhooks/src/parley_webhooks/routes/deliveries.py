"""``/v1/webhooks/deliveries``: what was sent where, every attempt, and replaying one delivery."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Query
from parley_common.api import SessionDep
from parley_common.auth.dependencies import Caller
from parley_common.errors import Problem
from sqlalchemy import select, tuple_, update

from parley_webhooks.models import Attempt, Delivery, Endpoint
from parley_webhooks.routes.endpoints import REQUEUE
from parley_webhooks.schemas import AttemptOut, DeliveryDetail, DeliveryOut, DeliveryPage

router = APIRouter(prefix="/v1/webhooks/deliveries", tags=["webhook deliveries"])


def _cursor(delivery: Delivery) -> str:
    return base64.urlsafe_b64encode(f"{delivery.created_at.isoformat()}|{delivery.id}".encode()).decode()


def _parse_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        created, _, ident = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return datetime.fromisoformat(created), UUID(ident)
    except ValueError:
        raise Problem(
            400, "invalid_cursor", "The cursor is not one this API returned.", param="cursor"
        ) from None


@router.get("", response_model=DeliveryPage)
async def list_deliveries(
    caller: Caller,
    session: SessionDep,
    endpoint_id: UUID | None = None,
    status: Literal["pending", "succeeded", "failed"] | None = None,
    event_type: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: str | None = None,
) -> DeliveryPage:
    query = select(Delivery).where(Delivery.user_id == caller.user_id)
    if endpoint_id is not None:
        query = query.where(Delivery.endpoint_id == endpoint_id)
    if status is not None:
        query = query.where(Delivery.status == status)
    if event_type is not None:
        query = query.where(Delivery.event_type == event_type)
    if cursor is not None:
        query = query.where(tuple_(Delivery.created_at, Delivery.id) < tuple_(*_parse_cursor(cursor)))
    rows = list(
        await session.scalars(query.order_by(Delivery.created_at.desc(), Delivery.id.desc()).limit(limit + 1))
    )
    has_more = len(rows) > limit
    rows = rows[:limit]
    return DeliveryPage(
        data=[DeliveryOut.model_validate(d) for d in rows],
        has_more=has_more,
        next_cursor=_cursor(rows[-1]) if has_more else None,
    )


@router.get("/{delivery_id}", response_model=DeliveryDetail)
async def get_delivery(delivery_id: UUID, caller: Caller, session: SessionDep) -> DeliveryDetail:
    delivery = await session.scalar(
        select(Delivery).where(Delivery.id == delivery_id, Delivery.user_id == caller.user_id)
    )
    if delivery is None:
        raise Problem(404, "delivery_not_found", "No such delivery.")
    attempts = await session.scalars(
        select(Attempt).where(Attempt.delivery_id == delivery.id).order_by(Attempt.number, Attempt.id)
    )
    return DeliveryDetail.model_validate(
        {
            **DeliveryOut.model_validate(delivery).model_dump(),
            "body": delivery.body,
            "attempts": [AttemptOut.model_validate(a) for a in attempts],
        }
    )


@router.post("/{delivery_id}/replay", status_code=202, response_model=DeliveryOut)
async def replay_delivery(delivery_id: UUID, caller: Caller, session: SessionDep) -> DeliveryOut:
    row = (
        await session.execute(
            select(Delivery, Endpoint.enabled)
            .join(Endpoint, Endpoint.id == Delivery.endpoint_id)
            .where(Delivery.id == delivery_id, Delivery.user_id == caller.user_id)
            .with_for_update(of=Delivery)
        )
    ).first()
    if row is None:
        raise Problem(404, "delivery_not_found", "No such delivery.")
    delivery, enabled = row
    if delivery.status == "pending":
        raise Problem(409, "delivery_pending", "This delivery is still being attempted.")
    if not enabled:
        raise Problem(409, "endpoint_disabled", "Enable the endpoint before replaying deliveries to it.")
    await session.execute(update(Delivery).where(Delivery.id == delivery.id).values(**REQUEUE))
    await session.refresh(delivery)
    return DeliveryOut.model_validate(delivery)
