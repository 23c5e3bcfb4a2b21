"""``/v1/admin``: plans, per-user settings and account deletion, for administrators only.

Changes take effect without a restart, on the next request on every replica: each one raises a revision
in its transaction and publishes it to Redis after commit (see :mod:`parley_gateway.directory`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request, Response
from parley_common.errors import Problem
from parley_common.logs import get_logger
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from parley_gateway import accounts
from parley_gateway.auth import CurrentPrincipal, Principal, unauthorised
from parley_gateway.limits.keys import UserKeys
from parley_gateway.models import User
from parley_gateway.plans import PlanFields, PlanOverrides
from parley_gateway.state import Gateway

PLAN_NAME = r"^[a-z0-9][a-z0-9_-]{0,49}$"
log = get_logger(__name__)


async def admin_principal(principal: CurrentPrincipal, request: Request) -> Principal:
    gw: Gateway = request.app.state.gw
    # The role is read from the table, not the cache: a demoted admin loses access immediately.
    async with gw.sessionmaker() as session:
        role = (
            await session.execute(select(User.role).where(User.id == principal.account.id))
        ).scalar_one_or_none()
    if role is None:  # the caller's own account was deleted since this replica cached it
        raise unauthorised()
    if role != "admin":
        raise Problem(403, "forbidden", "This route is for administrators.")
    return principal


AdminPrincipal = Annotated[Principal, Depends(admin_principal)]
router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(admin_principal)])


class PlanOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    description: str
    allowed_models: list[str]
    default_model: str | None
    model_routes: dict[str, str]
    requests_per_minute: int | None
    tokens_per_minute: int | None
    concurrent_streams: int | None
    daily_token_quota: int | None
    monthly_token_quota: int | None
    max_output_tokens: int
    cache: str
    rag_max_documents: int | None
    rag_max_document_bytes: int
    revision: int
    created_at: datetime
    modified_at: datetime | None


class PlanCreate(PlanFields):
    name: str = Field(pattern=PLAN_NAME)


class UserAdminOut(BaseModel):
    id: UUID
    email: str
    role: str
    plan: str
    plan_overrides: dict[str, Any]
    plan_changed_at: datetime | None
    effective_plan: dict[str, Any]
    created_at: datetime


class UserChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plan: str | None = Field(None, pattern=PLAN_NAME)
    role: Literal["user", "admin"] | None = None
    plan_overrides: PlanOverrides | None = Field(
        None, description="Replaces the user's overrides; send {} to clear them"
    )


def _gw(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gw
    return gw


async def _after_plan_change(gw: Gateway, revision: int) -> None:
    await gw.limiter.publish_revision(f"{gw.settings.redis_key_prefix}gw:plans:revision", revision)
    await gw.directory.load_plans()


@router.get("/plans", response_model=list[PlanOut])
async def list_plans(request: Request) -> Any:
    async with _gw(request).sessionmaker() as session:
        return await accounts.list_plans(session)


@router.post("/plans", status_code=201, response_model=PlanOut)
async def create_plan(body: PlanCreate, request: Request) -> Any:
    gw = _gw(request)
    fields = PlanFields.model_validate(body.model_dump(exclude={"name"}, exclude_unset=True))
    async with gw.sessionmaker.begin() as session:
        plan, revision = await accounts.create_plan(session, body.name, fields)
    await _after_plan_change(gw, revision)
    return plan


@router.get("/plans/{name}", response_model=PlanOut)
async def get_plan(name: str, request: Request) -> Any:
    async with _gw(request).sessionmaker() as session:
        return await accounts.get_plan(session, name)


@router.patch("/plans/{name}", response_model=PlanOut)
async def update_plan(name: str, body: PlanFields, request: Request) -> Any:
    gw = _gw(request)
    async with gw.sessionmaker.begin() as session:
        plan, revision = await accounts.update_plan(session, name, body)
    await _after_plan_change(gw, revision)
    return plan


@router.delete("/plans/{name}", status_code=204)
async def delete_plan(name: str, request: Request) -> Response:
    gw = _gw(request)
    async with gw.sessionmaker.begin() as session:
        revision = await accounts.delete_plan(session, name)
    await _after_plan_change(gw, revision)
    return Response(status_code=204)


async def _user_out(gw: Gateway, user: User) -> UserAdminOut:
    base = await gw.directory.plan(user.plan)
    effective = base.with_overrides(user.plan_overrides or {}).public() if base is not None else {}
    return UserAdminOut(
        id=user.id,
        email=user.email,
        role=user.role,
        plan=user.plan,
        plan_overrides=user.plan_overrides or {},
        plan_changed_at=user.plan_changed_at,
        effective_plan=effective,
        created_at=user.created_at,
    )


@router.get("/users", response_model=UserAdminOut)
async def find_user(request: Request, email: Annotated[str, Query(max_length=320)]) -> Any:
    gw = _gw(request)
    async with gw.sessionmaker() as session:
        user = await accounts.user_by_email(session, email)
    if user is None:
        raise Problem(404, "user_not_found", "No such user.")
    return await _user_out(gw, user)


@router.get("/users/{user_id}", response_model=UserAdminOut)
async def get_user(user_id: UUID, request: Request) -> Any:
    gw = _gw(request)
    async with gw.sessionmaker() as session:
        user = await accounts.get_user(session, user_id)
    return await _user_out(gw, user)


@router.patch("/users/{user_id}", response_model=UserAdminOut)
async def change_user(user_id: UUID, body: UserChange, request: Request) -> Any:
    gw = _gw(request)
    overrides = (
        body.plan_overrides.model_dump(exclude_unset=True) if body.plan_overrides is not None else None
    )
    async with gw.sessionmaker.begin() as session:
        changed = await accounts.change_user(
            session,
            user_id,
            plan=body.plan,
            role=body.role,
            overrides=overrides,
            reason="admin",
            region=gw.settings.region,
        )
        user = changed[0] if changed else await accounts.get_user(session, user_id)
    if changed:
        await gw.limiter.publish_revision(
            UserKeys.build(gw.settings.redis_key_prefix, user_id).user_revision, changed[1]
        )
        gw.directory.forget(user_id)
    return await _user_out(gw, user)


@router.delete("/users/{user_id}", status_code=204)
async def delete_user(user_id: UUID, request: Request, admin: AdminPrincipal) -> Response:
    """Erase an account as ``DELETE /v1/me`` does, without its owner's re-authentication."""
    gw = _gw(request)
    async with gw.sessionmaker.begin() as session:
        revision = await accounts.delete_user(session, user_id, gw.settings.region)
    if revision is None:
        raise Problem(404, "user_not_found", "No such user.")
    await gw.directory.erased(user_id, revision)
    log.info("account.deleted", user_id=str(user_id), by=str(admin.account.id))
    return Response(status_code=204)
