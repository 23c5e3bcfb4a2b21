"""Sign-up, login, token refresh and logout, and the public keys that verify the gateway's tokens."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from parley_common.errors import Problem
from parley_common.http import client_ip
from parley_common.logs import get_logger
from pydantic import BaseModel, ConfigDict, EmailStr, Field

from parley_gateway import accounts
from parley_gateway.limits.keys import auth_keys
from parley_gateway.limits.limiter import LimitsUnavailable, retry_after_header
from parley_gateway.passwords import hash_password, verify_password
from parley_gateway.state import Gateway

router = APIRouter(tags=["auth"])
log = get_logger(__name__)


class Credentials(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: EmailStr
    # An upper bound keeps argon2 from being fed megabytes per request.
    password: str = Field(min_length=8, max_length=256)


class RefreshRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    refresh_token: str = Field(min_length=1, max_length=2048)


class UserOut(BaseModel):
    id: UUID
    email: str
    role: str
    plan: str
    created_at: datetime


class TokenOut(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


def _gw(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gw
    return gw


async def limit_attempts(gw: Gateway, request: Request, email: str) -> None:
    """Per client IP and per email, across replicas: a brake on password guessing and sign-up floods."""
    digest = hashlib.sha256(accounts.normalise_email(email).encode()).hexdigest()[:32]
    try:
        wait = await gw.limiter.allow_auth_attempt(
            auth_keys(gw.settings.redis_key_prefix, client_ip(request), digest)
        )
    except LimitsUnavailable:
        raise Problem(503, "limits_unavailable", "Try again shortly.", headers={"retry-after": "1"}) from None
    if wait is not None:
        raise Problem(
            429,
            "too_many_attempts",
            "Too many attempts from this address or for this account; try again later.",
            headers={"retry-after": retry_after_header(wait)},
        )


async def _tokens(gw: Gateway, user_id: UUID) -> TokenOut:
    async with gw.sessionmaker.begin() as session:
        refresh = await accounts.start_session(session, user_id, gw.settings.refresh_token_ttl)
    return TokenOut(
        access_token=gw.tokens.issue_access_token(user_id),
        refresh_token=refresh,
        expires_in=gw.tokens.ttl,
    )


@router.post("/v1/auth/register", status_code=201, response_model=UserOut)
async def register(body: Credentials, request: Request) -> Any:
    gw = _gw(request)
    await limit_attempts(gw, request, body.email)
    password_hash = await run_in_threadpool(hash_password, body.password)
    async with gw.sessionmaker.begin() as session:
        user = await accounts.create_user(
            session, body.email, password_hash, gw.settings.signup_plan, gw.settings.region
        )
    log.info("user.registered", user_id=str(user.id))
    return user


@router.post("/v1/auth/login", response_model=TokenOut)
async def login(body: Credentials, request: Request) -> TokenOut:
    gw = _gw(request)
    await limit_attempts(gw, request, body.email)
    async with gw.sessionmaker() as session:
        user = await accounts.user_by_email(session, body.email)
    ok = await run_in_threadpool(verify_password, user.password_hash if user else None, body.password)
    if not ok or user is None:
        raise Problem(401, "invalid_credentials", "Email or password is wrong.")
    return await _tokens(gw, user.id)


@router.post("/v1/auth/refresh", response_model=TokenOut)
async def refresh(body: RefreshRequest, request: Request) -> TokenOut:
    gw = _gw(request)
    try:
        async with gw.sessionmaker.begin() as session:
            rotation = await accounts.rotate_refresh(
                session, body.refresh_token, gw.settings.refresh_token_ttl
            )
    except accounts.InvalidRefreshToken as exc:
        raise Problem(401, "invalid_refresh_token", f"The refresh token is {exc.reason}.") from None
    if rotation.reused_family is not None:
        # Committed above: the whole session is revoked, for the thief and the owner alike.
        log.warning("auth.refresh_token_reused", family=str(rotation.reused_family))
        raise Problem(
            401, "refresh_token_reused", "This refresh token was already used; the session is revoked."
        )
    assert rotation.user_id is not None
    assert rotation.refresh_token is not None
    return TokenOut(
        access_token=gw.tokens.issue_access_token(rotation.user_id),
        refresh_token=rotation.refresh_token,
        expires_in=gw.tokens.ttl,
    )


@router.post("/v1/auth/logout", status_code=204)
async def logout(body: RefreshRequest, request: Request) -> Response:
    gw = _gw(request)
    async with gw.sessionmaker.begin() as session:
        await accounts.end_session(session, body.refresh_token)
    return Response(status_code=204)


@router.get("/.well-known/jwks.json", include_in_schema=False)
async def jwks(request: Request) -> dict[str, Any]:
    return _gw(request).tokens.jwks()
