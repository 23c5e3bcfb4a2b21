"""Sign-up, login and the public keys that verify the gateway's tokens."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from parley_common.api import SessionDep
from parley_common.errors import Problem
from parley_common.logs import get_logger
from pydantic import BaseModel, ConfigDict, EmailStr, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from parley_gateway.models import User
from parley_gateway.security import TokenService, hash_password, verify_password

router = APIRouter()
log = get_logger(__name__)


class Credentials(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: EmailStr
    # An upper bound keeps argon2 from being fed megabytes per request.
    password: str = Field(min_length=8, max_length=256)


class UserOut(BaseModel):
    id: UUID
    email: str
    role: str
    plan: str
    created_at: datetime


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


def normalise_email(email: str) -> str:
    return email.strip().lower()


@router.post("/v1/auth/register", status_code=201, response_model=UserOut)
async def register(body: Credentials, session: SessionDep) -> User:
    user = User(
        email=normalise_email(body.email), password_hash=await run_in_threadpool(hash_password, body.password)
    )
    session.add(user)
    try:
        await session.flush()
    except IntegrityError:
        raise Problem(409, "email_taken", "An account with this email already exists.") from None
    await session.refresh(user)
    log.info("user.registered", user_id=str(user.id))
    return user


@router.post("/v1/auth/login", response_model=TokenOut)
async def login(body: Credentials, session: SessionDep, request: Request) -> TokenOut:
    user = (
        await session.execute(select(User).where(User.email == normalise_email(body.email)))
    ).scalar_one_or_none()
    ok = await run_in_threadpool(verify_password, user.password_hash if user else None, body.password)
    if not ok or user is None:
        raise Problem(401, "invalid_credentials", "Email or password is wrong.")
    tokens: TokenService = request.app.state.tokens
    return TokenOut(
        access_token=tokens.issue_access_token(user.id, user.role, user.plan), expires_in=tokens.ttl
    )


@router.get("/.well-known/jwks.json", include_in_schema=False)
async def jwks(request: Request) -> dict[str, Any]:
    tokens: TokenService = request.app.state.tokens
    return tokens.jwks()
