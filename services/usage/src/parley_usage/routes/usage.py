"""``GET /v1/usage`` (the caller's usage) and the admin views, behind the gateway (read-only)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query
from parley_common.api import SessionDep
from parley_common.auth.dependencies import Caller
from parley_common.errors import Problem

from parley_usage.drift import drift
from parley_usage.repository import UsageRepository
from parley_usage.schemas import DriftDay, DriftReport, GroupBy, UsageReport

router = APIRouter()

MAX_RANGE_DAYS = 366

FromQuery = Annotated[
    date | None, Query(alias="from", description="First UTC day (default: the first of this month)")
]
ToQuery = Annotated[date | None, Query(alias="to", description="Last UTC day, included (default: today)")]
GroupQuery = Annotated[GroupBy, Query(description="day or model")]


def _range(start: date | None, end: date | None) -> tuple[date, date]:
    today = datetime.now(UTC).date()
    end = end or today
    start = start or end.replace(day=1)
    if start > end:
        raise Problem(422, "invalid_range", "`from` must not be after `to`.", param="from")
    if end - start >= timedelta(days=MAX_RANGE_DAYS):
        raise Problem(422, "range_too_long", f"A range covers at most {MAX_RANGE_DAYS} days.", param="to")
    return start, end


async def _report(
    session: SessionDep, user_id: UUID, start: date, end: date, group_by: GroupBy
) -> UsageReport:
    usage = UsageRepository(session)
    return UsageReport(
        user_id=user_id,
        from_=start,
        to=end,
        group_by=group_by,
        data=await usage.groups(user_id, start, end, group_by),
        total=await usage.total(user_id, start, end),
    )


@router.get("/v1/usage", response_model=UsageReport, response_model_by_alias=True)
async def my_usage(
    caller: Caller,
    session: SessionDep,
    start: FromQuery = None,
    end: ToQuery = None,
    group_by: GroupQuery = "day",
) -> UsageReport:
    """The caller's usage per UTC day or per model."""
    first, last = _range(start, end)
    return await _report(session, caller.user_id, first, last, group_by)


def _require_admin(caller: Caller) -> None:
    if caller.role != "admin":
        raise Problem(403, "forbidden", "This view is for administrators.")


@router.get("/v1/admin/usage", response_model=UsageReport, response_model_by_alias=True)
async def user_usage(
    caller: Caller,
    session: SessionDep,
    user_id: Annotated[UUID, Query(description="Whose usage")],
    start: FromQuery = None,
    end: ToQuery = None,
    group_by: GroupQuery = "day",
) -> UsageReport:
    """Any user's usage (administrators only); 404 when the ledger has never seen that user."""
    _require_admin(caller)
    first, last = _range(start, end)
    if not await UsageRepository(session).has_usage(user_id):
        raise Problem(404, "user_not_found", "No usage was ever recorded for this user.")
    return await _report(session, user_id, first, last, group_by)


@router.get("/v1/admin/usage/drift", response_model=DriftReport, response_model_by_alias=True)
async def provider_drift(
    caller: Caller, session: SessionDep, start: FromQuery = None, end: ToQuery = None
) -> DriftReport:
    """Provider-reported usage against the ledger, per UTC day and provider (administrators only)."""
    _require_admin(caller)
    first, last = _range(start, end)
    days = await session.run_sync(lambda sync: drift(sync.connection(), first, last))
    return DriftReport(
        from_=first,
        to=last,
        data=[
            DriftDay(
                day=d.day,
                provider=d.provider,
                provider_tokens=d.provider_tokens,
                ledger_tokens=d.ledger_tokens,
                drift_tokens=d.drift_tokens,
                drift_ratio=d.drift_ratio,
            )
            for d in days
        ],
    )
