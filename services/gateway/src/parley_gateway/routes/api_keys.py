"""``/v1/api-keys``: create (the secret is shown once), list, get and revoke the caller's keys."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Request, Response
from parley_common.errors import Problem
from pydantic import BaseModel, ConfigDict, Field

from parley_gateway import accounts
from parley_gateway.auth import CurrentPrincipal, Principal
from parley_gateway.state import Gateway

router = APIRouter(prefix="/v1/api-keys", tags=["api-keys"])


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    expires_in_days: int | None = Field(None, ge=1, le=3650)


class ApiKeyOut(BaseModel):
    id: UUID
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The secret; shown this once and never again")


def _owner(principal: Principal) -> UUID:
    # A key could otherwise mint more keys, outliving its own revocation.
    if principal.kind == "api_key":
        raise Problem(403, "forbidden", "API keys are managed with a signed-in session, not an API key.")
    return principal.account.id


@router.post("", status_code=201, response_model=ApiKeyCreated)
async def create(body: ApiKeyCreate, principal: CurrentPrincipal, request: Request) -> Any:
    gw: Gateway = request.app.state.gw
    async with gw.sessionmaker.begin() as session:
        key, secret = await accounts.create_api_key(
            session, _owner(principal), body.name, body.expires_in_days
        )
    return ApiKeyCreated.model_validate(
        {**ApiKeyOut.model_validate(key, from_attributes=True).model_dump(), "key": secret}
    )


@router.get("", response_model=list[ApiKeyOut])
async def list_keys(principal: CurrentPrincipal, request: Request) -> Any:
    gw: Gateway = request.app.state.gw
    async with gw.sessionmaker() as session:
        return await accounts.list_api_keys(session, _owner(principal))


@router.get("/{key_id}", response_model=ApiKeyOut)
async def get_key(key_id: UUID, principal: CurrentPrincipal, request: Request) -> Any:
    gw: Gateway = request.app.state.gw
    async with gw.sessionmaker() as session:
        return await accounts.get_api_key(session, _owner(principal), key_id)


@router.delete("/{key_id}", status_code=204)
async def revoke(key_id: UUID, principal: CurrentPrincipal, request: Request) -> Response:
    gw: Gateway = request.app.state.gw
    owner = _owner(principal)
    async with gw.sessionmaker.begin() as session:
        revision = await accounts.revoke_api_key(session, owner, key_id)
    # After commit: every replica drops its cached copy of this key at the owner's next request.
    await gw.limiter.publish_revision(principal.account.keys.user_revision, revision)
    gw.directory.forget(owner)
    return Response(status_code=204)
