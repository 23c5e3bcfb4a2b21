"""``/v1/webhooks/endpoints``: an owner's endpoints, their secrets, test sends and bulk replays.

Every query is scoped to the caller; another user's endpoint id answers 404 like one that never existed.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from uuid import UUID

import anyio
from fastapi import APIRouter, Request, Response
from parley_common.api import SessionDep
from parley_common.auth.dependencies import Caller
from parley_common.errors import Problem
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from parley_webhooks import signing
from parley_webhooks.config import Settings
from parley_webhooks.delivery import TEST_EVENT_TYPE, webhook_id
from parley_webhooks.models import Delivery, Endpoint, EndpointSecret
from parley_webhooks.schemas import (
    DeliveryOut,
    EndpointCreate,
    EndpointCreated,
    EndpointList,
    EndpointOut,
    EndpointUpdate,
    ReplayRange,
    ReplayResult,
    SecretRotated,
)
from parley_webhooks.secret_box import SecretBox
from parley_webhooks.ssrf import UnsafeUrl

router = APIRouter(prefix="/v1/webhooks/endpoints", tags=["webhook endpoints"])


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _sealed(request: Request, secret: str) -> str:
    box: SecretBox = request.app.state.secret_box
    return box.seal(secret)


async def check_url(request: Request, url: str) -> None:
    """The SSRF policy, with DNS off the event loop."""
    policy = _settings(request).url_policy()
    try:
        await anyio.to_thread.run_sync(policy.check, url)
    except UnsafeUrl as exc:
        raise Problem(400, "url_not_allowed", str(exc), param="url") from None


async def owned_endpoint(
    session: AsyncSession, user_id: UUID, endpoint_id: UUID, *, lock: bool = False
) -> Endpoint:
    query = select(Endpoint).where(Endpoint.id == endpoint_id, Endpoint.user_id == user_id)
    if lock:
        query = query.with_for_update()
    endpoint = (await session.execute(query)).scalar_one_or_none()
    if endpoint is None:
        raise Problem(404, "endpoint_not_found", "No such webhook endpoint.")
    return endpoint


@router.post("", status_code=201, response_model=EndpointCreated)
async def create_endpoint(
    body: EndpointCreate, caller: Caller, session: SessionDep, request: Request
) -> EndpointCreated:
    settings = _settings(request)
    await check_url(request, body.url)
    count = await session.scalar(select(func.count()).where(Endpoint.user_id == caller.user_id))
    if (count or 0) >= settings.webhooks_max_endpoints_per_user:
        raise Problem(
            409,
            "too_many_endpoints",
            f"A user may register {settings.webhooks_max_endpoints_per_user} endpoints.",
        )
    endpoint = Endpoint(
        id=uuid.uuid4(),
        user_id=caller.user_id,
        url=body.url,
        description=body.description,
        event_types=body.event_types,
        enabled=body.enabled,
    )
    secret = signing.new_secret(settings.webhooks_secret_bytes)
    session.add(endpoint)
    await session.flush()
    session.add(EndpointSecret(endpoint_id=endpoint.id, secret=_sealed(request, secret)))
    await session.flush()
    await session.refresh(endpoint)
    return EndpointCreated(**EndpointOut.model_validate(endpoint).model_dump(), secret=secret)


@router.get("", response_model=EndpointList)
async def list_endpoints(caller: Caller, session: SessionDep) -> EndpointList:
    rows = await session.scalars(
        select(Endpoint).where(Endpoint.user_id == caller.user_id).order_by(Endpoint.created_at, Endpoint.id)
    )
    return EndpointList(data=[EndpointOut.model_validate(e) for e in rows])


@router.get("/{endpoint_id}", response_model=EndpointOut)
async def get_endpoint(endpoint_id: UUID, caller: Caller, session: SessionDep) -> EndpointOut:
    return EndpointOut.model_validate(await owned_endpoint(session, caller.user_id, endpoint_id))


@router.patch("/{endpoint_id}", response_model=EndpointOut)
async def update_endpoint(
    endpoint_id: UUID, body: EndpointUpdate, caller: Caller, session: SessionDep, request: Request
) -> EndpointOut:
    endpoint = await owned_endpoint(session, caller.user_id, endpoint_id, lock=True)
    if body.url is not None and body.url != endpoint.url:
        await check_url(request, body.url)
        endpoint.url = body.url
    if body.description is not None:
        endpoint.description = body.description
    if body.event_types is not None:
        endpoint.event_types = body.event_types
    if body.enabled is True and not endpoint.enabled:
        # A fresh start: the disable clock restarts with the next failure.
        endpoint.enabled = True
        endpoint.disabled_reason = None
        endpoint.disabled_at = None
        endpoint.failing_since = None
    elif body.enabled is False and endpoint.enabled:
        endpoint.enabled = False
        endpoint.disabled_reason = "manual"
        endpoint.disabled_at = datetime.now(UTC)
    await session.flush()
    await session.refresh(endpoint)
    return EndpointOut.model_validate(endpoint)


@router.delete("/{endpoint_id}", status_code=204)
async def delete_endpoint(endpoint_id: UUID, caller: Caller, session: SessionDep) -> Response:
    result = await session.execute(
        delete(Endpoint).where(Endpoint.id == endpoint_id, Endpoint.user_id == caller.user_id)
    )
    if not getattr(result, "rowcount", 0):
        raise Problem(404, "endpoint_not_found", "No such webhook endpoint.")
    return Response(status_code=204)


@router.post("/{endpoint_id}/secret/rotate", response_model=SecretRotated)
async def rotate_secret(
    endpoint_id: UUID, caller: Caller, session: SessionDep, request: Request
) -> SecretRotated:
    settings = _settings(request)
    endpoint = await owned_endpoint(session, caller.user_id, endpoint_id, lock=True)
    now = datetime.now(UTC)
    overlap_until = now + timedelta(seconds=settings.webhooks_secret_overlap)
    # At most two secrets sign at once: the new one and the one it replaces; older ones stop now.
    await session.execute(
        update(EndpointSecret)
        .where(EndpointSecret.endpoint_id == endpoint.id, EndpointSecret.expires_at > now)
        .values(expires_at=now)
    )
    await session.execute(
        update(EndpointSecret)
        .where(EndpointSecret.endpoint_id == endpoint.id, EndpointSecret.expires_at.is_(None))
        .values(expires_at=overlap_until)
    )
    secret = signing.new_secret(settings.webhooks_secret_bytes)
    session.add(EndpointSecret(endpoint_id=endpoint.id, secret=_sealed(request, secret)))
    await session.flush()
    return SecretRotated(
        secret=secret,
        previous_secret_expires_at=overlap_until if settings.webhooks_secret_overlap > 0 else None,
    )


@router.post("/{endpoint_id}/test", status_code=202, response_model=DeliveryOut)
async def send_test_event(endpoint_id: UUID, caller: Caller, session: SessionDep) -> DeliveryOut:
    endpoint = await owned_endpoint(session, caller.user_id, endpoint_id)
    if not endpoint.enabled:
        raise Problem(409, "endpoint_disabled", "Enable the endpoint before sending it a test event.")
    event_id = uuid.uuid4()
    now = datetime.now(UTC)
    body = json.dumps(
        {
            "id": str(event_id),
            "type": TEST_EVENT_TYPE,
            "source": "webhooks",
            "time": now.isoformat().replace("+00:00", "Z"),
            "subject": str(caller.user_id),
            "endpoint_id": str(endpoint.id),
        },
        separators=(",", ":"),
    )
    delivery = Delivery(
        id=uuid.uuid4(),
        endpoint_id=endpoint.id,
        user_id=caller.user_id,
        event_id=event_id,
        event_type=TEST_EVENT_TYPE,
        webhook_id=webhook_id(event_id),
        body=body,
    )
    session.add(delivery)
    await session.flush()
    await session.refresh(delivery)
    return DeliveryOut.model_validate(delivery)


@router.post("/{endpoint_id}/replay", status_code=202, response_model=ReplayResult)
async def replay_failed(
    endpoint_id: UUID, body: ReplayRange, caller: Caller, session: SessionDep
) -> ReplayResult:
    endpoint = await owned_endpoint(session, caller.user_id, endpoint_id)
    if not endpoint.enabled:
        raise Problem(409, "endpoint_disabled", "Enable the endpoint before replaying deliveries to it.")
    result = await session.execute(
        update(Delivery)
        .where(
            Delivery.endpoint_id == endpoint.id,
            Delivery.user_id == caller.user_id,
            Delivery.status == "failed",
            Delivery.created_at >= body.since,
            Delivery.created_at < body.until,
        )
        .values(**REQUEUE)
    )
    return ReplayResult(replayed=int(getattr(result, "rowcount", 0) or 0))


# A replayed delivery starts a new round of the retry schedule, due now, with the same webhook-id.
REQUEUE = {
    "status": "pending",
    "round_attempts": 0,
    "next_attempt_at": func.now(),
    "dispatch_token": None,
    "finished_at": None,
}
