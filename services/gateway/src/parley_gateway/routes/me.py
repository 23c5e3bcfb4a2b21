"""``GET /v1/me``: the caller, their plan, and for every limit its size, what is left and when it resets."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request

from parley_gateway.auth import CurrentPrincipal, authenticate, bearer
from parley_gateway.directory import Account
from parley_gateway.limits.keys import seconds_to
from parley_gateway.limits.limiter import StaleIdentity
from parley_gateway.state import Gateway

router = APIRouter(tags=["account"])


def _at(seconds_from_now: float) -> str:
    return datetime.fromtimestamp(time.time() + seconds_from_now, UTC).isoformat()


def _limit(limit: int | None, remaining: int | None, reset_in: float | None, **extra: Any) -> dict[str, Any]:
    return {
        "limit": limit,
        "remaining": remaining,
        "reset_seconds": None if reset_in is None else round(reset_in, 3),
        "reset": None if reset_in is None else _at(reset_in),
        **extra,
    }


def _limits(gw: Gateway, account: Account, state: dict[str, Any] | None) -> dict[str, Any]:
    plan = account.plan
    window = gw.settings.limits_window_seconds
    if state is None:  # Redis is away: the figures, but not what is left of them
        state = {}
    requests_left = state.get("requests_left")
    tokens_left = state.get("tokens_left")
    streams_left = state.get("streams_left")
    reserved = int(state.get("reserved", 0))
    out = {
        "requests_per_minute": _limit(
            plan.requests_per_minute,
            None if plan.requests_per_minute is None or requests_left is None else int(requests_left),
            None
            if plan.requests_per_minute is None or requests_left is None
            else int(state["requests_reset"]) / 1000,
            window_seconds=window,
        ),
        "tokens_per_minute": _limit(
            plan.tokens_per_minute,
            None if plan.tokens_per_minute is None or tokens_left is None else int(tokens_left),
            None
            if plan.tokens_per_minute is None or tokens_left is None
            else int(state["tokens_reset"]) / 1000,
            window_seconds=window,
        ),
        "concurrent_streams": _limit(
            plan.concurrent_streams,
            None if plan.concurrent_streams is None or streams_left is None else int(streams_left),
            None,
        ),
    }
    for name, quota, used_key, period in (
        ("daily_tokens", plan.daily_token_quota, "used_day", "day"),
        ("monthly_tokens", plan.monthly_token_quota, "used_month", "month"),
    ):
        used = int(state[used_key]) if used_key in state else None
        remaining = None if quota is None or used is None else max(0, quota - used - reserved)
        out[name] = _limit(
            quota, remaining, seconds_to(period), used=used, reserved=reserved if used is not None else None
        )
    return out


@router.get("/v1/me")
async def me(principal: CurrentPrincipal, request: Request) -> dict[str, Any]:
    gw: Gateway = request.app.state.gw
    account = principal.account
    state = None
    for _ in range(3):
        state = await gw.limiter.peek(account.keys, account.plan)
        if state is None:
            break
        try:
            _check_revisions(gw, account, state)
            break
        except StaleIdentity as stale:
            await gw.directory.refresh_after(stale, account.id)
            principal = await authenticate(gw, bearer(request))
            account = principal.account
    return {
        "id": str(account.id),
        "email": account.email,
        "role": account.role,
        "credential": principal.kind,
        "plan": account.plan.public(),
        "limits": _limits(gw, account, state),
        "quota_counters_trusted": bool(state and int(state["seeded"]) == 1),
    }


def _check_revisions(gw: Gateway, account: Account, state: dict[str, Any]) -> None:
    plans, user = state["plans_revision"], state["user_revision"]
    if (plans and int(plans) > gw.directory.plans_revision) or (user and int(user) > account.revision):
        raise StaleIdentity(plans, user)
