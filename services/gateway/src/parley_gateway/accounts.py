"""Accounts, sessions (refresh tokens), API keys and plan administration: the gateway's writes.

Each operation is one unit of work on the session it is given; callers own the transaction. Changes
that replicas cache (a user's plan, role or overrides, an API key's revocation, a plan's figures) raise
a ``revision`` in the same transaction; the caller publishes it to Redis after commit (see directory).
Deleting an account publishes the revision it would have had next, so every replica finds its cached
copy outdated, looks again, and finds nothing.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from parley_common.errors import Problem
from parley_common.events import PlanChangedV1, UserDeletedV1, UserRegisteredV1
from sqlalchemy import delete, func, null, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from parley_gateway.models import ApiKey, OutboxMessage, Plan, PlanCatalog, RefreshToken, User
from parley_gateway.plans import NEVER_UNLIMITED, PlanFields
from parley_gateway.tokens import ExternalToken

REFRESH_PREFIX = "prt_"
API_KEY_PREFIX = "sk-parley-"
MAX_API_KEYS = 50


def normalise_email(email: str) -> str:
    return email.strip().lower()


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


# -- users ---------------------------------------------------------------------------------------------


async def create_user(session: AsyncSession, email: str, password_hash: str, plan: str, region: str) -> User:
    """A new account and its ``user.registered.v1`` event, in the caller's transaction."""
    user = User(email=normalise_email(email), password_hash=password_hash, plan=plan, plan_overrides={})
    session.add(user)
    try:
        await session.flush()
    except IntegrityError:
        raise Problem(409, "email_taken", "An account with this email already exists.") from None
    await session.refresh(user)
    event = UserRegisteredV1(
        source="gateway", subject=str(user.id), region=region, user_id=user.id, email=user.email
    )
    session.add(OutboxMessage.from_event(event))
    return user


async def create_external_user(session: AsyncSession, token: ExternalToken, plan: str, region: str) -> UUID:
    """First sign-in through the external issuer: an account without a password."""
    # Without a verified email the account gets a placeholder address on a reserved domain (RFC 2606).
    placeholder = f"oidc-{_digest(token.issuer + token.subject)[:24]}@example.com"
    email = token.email or placeholder
    taken = (await session.execute(select(User.id).where(User.email == normalise_email(email)))).first()
    if taken is not None:  # never link to an existing password account by email alone
        email = placeholder
    user = User(
        email=normalise_email(email),
        password_hash=None,
        plan=plan,
        plan_overrides={},
        external_issuer=token.issuer,
        external_subject=token.subject,
    )
    session.add(user)
    await session.flush()
    session.add(
        OutboxMessage.from_event(
            UserRegisteredV1(
                source="gateway", subject=str(user.id), region=region, user_id=user.id, email=user.email
            )
        )
    )
    return user.id


async def user_by_email(session: AsyncSession, email: str) -> User | None:
    return (
        await session.execute(select(User).where(User.email == normalise_email(email)))
    ).scalar_one_or_none()


async def bump_user_revision(session: AsyncSession, user_id: UUID) -> int:
    revision = (
        await session.execute(
            update(User).where(User.id == user_id).values(revision=User.revision + 1).returning(User.revision)
        )
    ).scalar_one()
    return int(revision)


async def delete_user(session: AsyncSession, user_id: UUID, region: str | None) -> int | None:
    """Erase an account in the caller's transaction: its sessions, its API keys, the row itself, and a
    ``user.deleted.v1`` event for the services that hold its data (chat, webhooks, notify).

    Returns the revision to publish after commit (see :meth:`Directory.erased`), or None when there is
    no such account (already deleted, perhaps by a concurrent request).
    """
    user = (
        await session.execute(select(User).where(User.id == user_id).with_for_update())
    ).scalar_one_or_none()
    if user is None:
        return None
    email, revision = user.email, user.revision + 1
    # The foreign keys cascade too; explicit statements keep the erasure independent of the schema's
    # ON DELETE clauses.
    await session.execute(delete(RefreshToken).where(RefreshToken.user_id == user_id))
    await session.execute(delete(ApiKey).where(ApiKey.user_id == user_id))
    await session.execute(delete(User).where(User.id == user_id))
    session.add(
        OutboxMessage.from_event(
            UserDeletedV1(source="gateway", subject=str(user_id), region=region, user_id=user_id, email=email)
        )
    )
    return revision


# -- sessions (refresh tokens) -------------------------------------------------------------------------


class InvalidRefreshToken(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def start_session(session: AsyncSession, user_id: UUID, ttl: int) -> str:
    """A refresh token opening a new session (a new token family)."""
    return await _issue_refresh(session, user_id, uuid.uuid4(), ttl)


async def _issue_refresh(session: AsyncSession, user_id: UUID, family: UUID, ttl: int) -> str:
    secret = REFRESH_PREFIX + secrets.token_urlsafe(32)
    session.add(
        RefreshToken(
            family_id=family,
            user_id=user_id,
            token_hash=_digest(secret),
            expires_at=_now() + timedelta(seconds=ttl),
        )
    )
    await session.flush()
    return secret


@dataclass(frozen=True)
class Rotation:
    user_id: UUID | None
    refresh_token: str | None
    reused_family: UUID | None = None


async def rotate_refresh(session: AsyncSession, secret: str, ttl: int) -> Rotation:
    """Replace a refresh token by a new one of the same family.

    Presenting a token that was already used (or revoked) means it leaked, or the session's owner and a
    thief are racing: the whole family is revoked (RFC 9700 §4.14.2). The caller must commit that
    revocation even though the request fails, so this returns instead of raising.
    """
    row = (
        await session.execute(
            select(RefreshToken).where(RefreshToken.token_hash == _digest(secret)).with_for_update()
        )
    ).scalar_one_or_none()
    if row is None:
        raise InvalidRefreshToken("unknown")
    if row.used_at is not None or row.revoked_at is not None:
        await _revoke_family(session, row.family_id)
        return Rotation(None, None, reused_family=row.family_id)
    if row.expires_at <= _now():
        raise InvalidRefreshToken("expired")
    row.used_at = _now()
    return Rotation(row.user_id, await _issue_refresh(session, row.user_id, row.family_id, ttl))


async def end_session(session: AsyncSession, secret: str) -> None:
    """Logout: revoke the refresh token's whole family (unknown tokens are ignored)."""
    family = (
        await session.execute(
            select(RefreshToken.family_id).where(RefreshToken.token_hash == _digest(secret))
        )
    ).scalar_one_or_none()
    if family is not None:
        await _revoke_family(session, family)


async def _revoke_family(session: AsyncSession, family: UUID) -> None:
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )


# -- API keys ------------------------------------------------------------------------------------------


async def create_api_key(
    session: AsyncSession, user_id: UUID, name: str, expires_in_days: int | None
) -> tuple[ApiKey, str]:
    """A new key for ``user_id``; the secret is returned once and only its digest is stored."""
    active = (
        await session.execute(
            select(func.count()).where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
        )
    ).scalar_one()
    if active >= MAX_API_KEYS:
        raise Problem(
            409, "too_many_api_keys", f"An account can hold at most {MAX_API_KEYS} active API keys."
        )
    secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        user_id=user_id,
        name=name,
        prefix=secret[: len(API_KEY_PREFIX) + 6],
        key_hash=_digest(secret),
        expires_at=_now() + timedelta(days=expires_in_days) if expires_in_days else None,
    )
    session.add(key)
    await session.flush()
    await session.refresh(key)
    return key, secret


async def list_api_keys(session: AsyncSession, user_id: UUID) -> list[ApiKey]:
    rows = await session.execute(
        select(ApiKey)
        .where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
        .order_by(ApiKey.created_at.desc())
    )
    return list(rows.scalars())


async def get_api_key(session: AsyncSession, user_id: UUID, key_id: UUID) -> ApiKey:
    key = (
        await session.execute(
            select(ApiKey).where(ApiKey.id == key_id, ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
        )
    ).scalar_one_or_none()
    if key is None:
        raise Problem(404, "api_key_not_found", "No such API key.")
    return key


async def revoke_api_key(session: AsyncSession, user_id: UUID, key_id: UUID) -> int:
    """Revoke one of the user's keys; returns the user's new revision (to publish after commit)."""
    key = await get_api_key(session, user_id, key_id)
    key.revoked_at = _now()
    return await bump_user_revision(session, user_id)


# -- plans and users (admin) ---------------------------------------------------------------------------


async def list_plans(session: AsyncSession) -> list[Plan]:
    return list((await session.execute(select(Plan).order_by(Plan.name))).scalars())


async def get_plan(session: AsyncSession, name: str) -> Plan:
    plan = await session.get(Plan, name)
    if plan is None:
        raise Problem(404, "plan_not_found", f"No plan named {name!r}.")
    return plan


async def _next_plan_revision(session: AsyncSession) -> int:
    # The row lock also serialises concurrent plan changes, so revisions commit in order.
    revision = await session.execute(
        update(PlanCatalog)
        .where(PlanCatalog.id == 1)
        .values(revision=PlanCatalog.revision + 1)
        .returning(PlanCatalog.revision)
    )
    return int(revision.scalar_one())


async def create_plan(session: AsyncSession, name: str, fields: PlanFields) -> tuple[Plan, int]:
    values = fields.model_dump(exclude_unset=True)
    plan = Plan(
        name=name,
        description=values.pop("description", None) or "",
        allowed_models=values.pop("allowed_models", None) or [],
        model_routes=values.pop("model_routes", None) or {},
        max_output_tokens=values.pop("max_output_tokens", None) or 4096,
        rag_max_document_bytes=values.pop("rag_max_document_bytes", None) or 100_000,
        cache=values.pop("cache", None) or "off",
        revision=await _next_plan_revision(session),
        # An explicit null is stored as NULL (unlimited): the ORM would put a column's default in its place.
        **{key: null() if value is None else value for key, value in values.items()},
    )
    session.add(plan)
    try:
        await session.flush()
    except IntegrityError:
        raise Problem(409, "plan_exists", f"A plan named {name!r} already exists.") from None
    await session.refresh(plan)
    return plan, plan.revision


_NOT_NULL = {"description": "", "allowed_models": [], "model_routes": {}, "cache": "off"}


async def update_plan(session: AsyncSession, name: str, fields: PlanFields) -> tuple[Plan, int]:
    plan = await get_plan(session, name)
    for key, value in fields.model_dump(exclude_unset=True).items():
        if value is None and key in _NOT_NULL:
            value = _NOT_NULL[key]
        if value is None and key in NEVER_UNLIMITED:
            raise Problem(422, "validation_error", f"{key} cannot be null.")
        setattr(plan, key, value)
    plan.revision = await _next_plan_revision(session)
    await session.flush()
    await session.refresh(plan)
    return plan, plan.revision


DEFAULT_PLAN_NAMES = frozenset({"free", "pro", "enterprise"})


async def delete_plan(session: AsyncSession, name: str) -> int:
    plan = await get_plan(session, name)
    if name in DEFAULT_PLAN_NAMES:
        raise Problem(409, "plan_in_use", "The default plans cannot be deleted.")
    members = (await session.execute(select(func.count()).where(User.plan == name))).scalar_one()
    if members:
        raise Problem(409, "plan_in_use", f"{members} accounts are on this plan; move them first.")
    await session.delete(plan)
    return await _next_plan_revision(session)


async def get_user(session: AsyncSession, user_id: UUID) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise Problem(404, "user_not_found", "No such user.")
    return user


async def change_user(
    session: AsyncSession,
    user_id: UUID,
    *,
    plan: str | None = None,
    role: str | None = None,
    overrides: dict[str, Any] | None = None,
    reason: str = "admin",
    at: datetime | None = None,
    external_ref: str | None = None,
    region: str | None = None,
) -> tuple[User, int] | None:
    """Apply an admin's (or billing's) change; returns (user, new revision), or None when nothing changed.

    A plan change writes ``plan.changed.v1`` in the same transaction (notify and webhooks tell the
    customer; this service's own worker sees it again and finds nothing to do).
    """
    user = await get_user(session, user_id)
    changed = False
    if plan is not None and plan != user.plan:
        await get_plan(session, plan)
        previous, user.plan = user.plan, plan
        user.plan_changed_at = at or _now()
        if reason == "admin":
            session.add(
                OutboxMessage.from_event(
                    PlanChangedV1(
                        source="gateway",
                        subject=str(user.id),
                        region=region,
                        user_id=user.id,
                        plan=plan,
                        previous_plan=previous,
                        reason="admin",
                        external_ref=external_ref,
                    )
                )
            )
        changed = True
    if role is not None and role != user.role:
        user.role = role
        changed = True
    if overrides is not None and overrides != user.plan_overrides:
        user.plan_overrides = overrides
        changed = True
    if not changed:
        return None
    await session.flush()
    revision = await bump_user_revision(session, user_id)
    await session.refresh(user)
    return user, revision
