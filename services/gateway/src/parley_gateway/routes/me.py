"""``/v1/me``: the caller, their plan, and for every limit its size, what is left and when it resets
(``GET``); deleting the caller's account (``DELETE``, the right to erasure).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from parley_common.errors import Problem
from parley_common.logs import get_logger
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from parley_gateway import accounts
from parley_gateway.auth import CurrentPrincipal, bearer, checked_principal, unauthorised
from parley_gateway.directory import Account
from parley_gateway.limits.keys import seconds_to
from parley_gateway.models import User
from parley_gateway.passwords import verify_password
from parley_gateway.routes.auth import limit_attempts
from parley_gateway.state import Gateway

router = APIRouter(tags=["account"])
log = get_logger(__name__)


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
async def me(request: Request) -> dict[str, Any]:
    gw: Gateway = request.app.state.gw
    # What CurrentPrincipal does, keeping the limits' state that the revision check read.
    principal, state = await checked_principal(gw, bearer(request))
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


class AccountDeletion(BaseModel):
    """Re-authentication: a stolen access token alone must not be enough to erase an account."""

    model_config = ConfigDict(extra="forbid")

    password: str | None = Field(None, max_length=256, description="The account's password")
    confirm_email: str | None = Field(
        None, max_length=320, description="The account's email, for accounts without a password (OIDC)"
    )


def _reauthentication_failed(expected: str) -> Problem:
    what = "its password" if expected == "password" else "its email address"
    return Problem(
        403,
        "reauthentication_failed",
        f"Deleting the account needs {what} in {expected!r}; nothing was changed.",
        expected=expected,
    )


@router.delete(
    "/v1/me",
    status_code=204,
    responses={403: {"description": "Wrong or missing confirmation, or an API key"}},
)
async def delete_me(
    principal: CurrentPrincipal, request: Request, body: AccountDeletion | None = None
) -> Response:
    """Delete the caller's account: sessions, API keys and the account itself, at once on every replica.

    ``user.deleted.v1`` tells the other services to erase what they hold of the user.
    """
    gw: Gateway = request.app.state.gw
    if principal.kind == "api_key":
        raise Problem(
            403, "forbidden", "An account is deleted with a signed-in session, not with an API key."
        )
    user_id = principal.account.id
    async with gw.sessionmaker() as session:
        row = (
            await session.execute(select(User.email, User.password_hash).where(User.id == user_id))
        ).one_or_none()
    if row is None:  # deleted by a request in flight
        raise unauthorised()
    body = body or AccountDeletion()
    # The same brake as login, per client IP and per account: this is a password check too.
    await limit_attempts(gw, request, row.email)
    if row.password_hash is not None:
        confirmed = body.password is not None and await run_in_threadpool(
            verify_password, row.password_hash, body.password
        )
        expected = "password"
    else:
        confirmed = body.confirm_email is not None and (
            accounts.normalise_email(body.confirm_email) == row.email
        )
        expected = "confirm_email"
    if not confirmed:
        log.warning("account.deletion_refused", user_id=str(user_id), expected=expected)
        raise _reauthentication_failed(expected)
    async with gw.sessionmaker.begin() as session:
        revision = await accounts.delete_user(session, user_id, gw.settings.region)
    if revision is None:
        raise unauthorised()
    await gw.directory.erased(user_id, revision)
    log.info("account.deleted", user_id=str(user_id), by="owner")
    return Response(status_code=204)
