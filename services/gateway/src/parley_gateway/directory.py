"""Who a credential belongs to and what their plan is, cached in the replica, never stale for long.

The hot path reads no table: accounts, plans and API keys are cached here. Each cached account carries
its ``revision`` (and the plans' highest revision), which the admission script compares with the copies
in Redis; whoever changes a plan, a user or an API key raises the revision in the same transaction and
publishes it to Redis after commit. So a change applies to the very next request on every replica: that
request's script reports the cache outdated, the replica reloads from the tables, and admits again.
A deleted account works the same way: its next revision is published, the replica reloads, finds no
row, and refuses the credential. While Redis is unreachable, entries expire after
``identity_cache_seconds`` instead.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from uuid import UUID

from parley_common.auth.internal import InternalIdentity, mint_internal_token
from parley_common.logs import get_logger
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from parley_gateway.config import Settings
from parley_gateway.limits.keys import UserKeys
from parley_gateway.limits.limiter import Limiter, StaleIdentity
from parley_gateway.models import ApiKey, Plan, PlanCatalog, User
from parley_gateway.plans import EffectivePlan
from parley_gateway.tokens import ExternalToken, TokenService

log = get_logger(__name__)

_NEGATIVE_TTL = 5.0  # unknown API keys: remembered briefly so a flood of one bad key stays off the DB
# Deleted accounts: their access tokens stay valid until they expire. User ids are never reused, so a
# missing account stays missing; this only bounds how long the set grows before it is cleared.
_GONE_MAX = 10_000


@dataclass(slots=True)
class Account:
    id: UUID
    email: str
    role: str
    plan: EffectivePlan
    revision: int
    keys: UserKeys
    expires: float
    internal: dict[UUID | None, tuple[str, float]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: UUID
    user_id: UUID
    user_revision: int
    expires_at: float | None
    cached_until: float


def api_key_digest(secret: str) -> str:
    # API keys carry 256 random bits, so one SHA-256 is as good as a slow hash and costs a microsecond.
    return hashlib.sha256(secret.encode()).hexdigest()


class Directory:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        limiter: Limiter,
        tokens: TokenService,
        settings: Settings,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.limiter = limiter
        self.tokens = tokens
        self.prefix = settings.redis_key_prefix
        self.ttl = settings.identity_cache_seconds
        self.internal_ttl = settings.internal_token_ttl
        self.region = settings.region
        self.plans: dict[str, EffectivePlan] = {}
        self.plans_revision = 0
        self._plans_expire = 0.0
        self._accounts: dict[UUID, Account] = {}
        self._keys: dict[str, KeyRecord | None] = {}
        self._negative: dict[str, float] = {}
        self._gone: dict[UUID, float] = {}  # accounts found missing, until when to answer without a query
        self._external: dict[tuple[str, str], UUID] = {}
        self._generation = 0  # raised by every invalidation; a load that raced one is not cached
        self._used_keys: set[UUID] = set()

    # -- plans -----------------------------------------------------------------------------------------

    async def load_plans(self) -> None:
        # One statement, so the plans and the catalogue revision come from the same snapshot.
        catalog = select(PlanCatalog.revision).where(PlanCatalog.id == 1).scalar_subquery()
        async with self.sessionmaker() as session:
            rows = (await session.execute(select(Plan, catalog))).all()
        self.plans = {plan.name: EffectivePlan.from_row(plan) for plan, _ in rows}
        self.plans_revision = int(rows[0][1]) if rows else 0
        self._plans_expire = time.monotonic() + self.ttl
        self._accounts.clear()  # their effective plans were built from the old ones

    async def plan(self, name: str) -> EffectivePlan | None:
        if name not in self.plans or time.monotonic() > self._plans_expire:
            await self.load_plans()
        return self.plans.get(name)

    # -- accounts --------------------------------------------------------------------------------------

    async def account(self, user_id: UUID) -> Account | None:
        cached = self._accounts.get(user_id)
        now = time.monotonic()
        if cached is not None and cached.expires > now:
            return cached
        if self._gone.get(user_id, 0.0) > now:
            return None
        if now > self._plans_expire:
            await self.load_plans()
        generation = self._generation
        async with self.sessionmaker() as session:
            row = (
                await session.execute(
                    select(User.email, User.role, User.plan, User.plan_overrides, User.revision).where(
                        User.id == user_id
                    )
                )
            ).one_or_none()
        if row is None:
            self._accounts.pop(user_id, None)
            self._remember_gone(user_id, now)
            return None
        base = self.plans.get(row.plan)
        if base is None:  # a plan created since the last load
            await self.load_plans()
            base = self.plans.get(row.plan)
            if base is None:
                log.error("directory.unknown_plan", user_id=str(user_id), plan=row.plan)
                return None
        account = Account(
            id=user_id,
            email=row.email,
            role=row.role,
            plan=base.with_overrides(row.plan_overrides or {}),
            revision=row.revision,
            keys=UserKeys.build(self.prefix, user_id),
            expires=now + self.ttl,
        )
        if generation == self._generation:
            self._accounts[user_id] = account
        return account

    def revisions(self, account: Account) -> tuple[str, str]:
        return str(self.plans_revision), str(account.revision)

    async def refresh_after(self, stale: StaleIdentity, user_id: UUID) -> None:
        """The admission script saw newer revisions in Redis than this replica's cache."""
        self._generation += 1
        if stale.plans_revision and int(stale.plans_revision) > self.plans_revision:
            await self.load_plans()
        self.forget(user_id)

    def forget(self, user_id: UUID) -> None:
        self._generation += 1
        self._accounts.pop(user_id, None)
        for digest in [d for d, rec in self._keys.items() if rec is not None and rec.user_id == user_id]:
            del self._keys[digest]

    async def erased(self, user_id: UUID, revision: int) -> None:
        """An account's deletion committed: its credentials are refused from the next request on, here
        at once, on other replicas when their revision check sees ``revision`` in Redis."""
        await self.limiter.publish_revision(UserKeys.build(self.prefix, user_id).user_revision, revision)
        self.forget(user_id)
        self._remember_gone(user_id, time.monotonic())
        for key in [k for k, known in self._external.items() if known == user_id]:
            del self._external[key]

    def _remember_gone(self, user_id: UUID, now: float) -> None:
        if len(self._gone) > _GONE_MAX:
            self._gone.clear()
        self._gone[user_id] = now + self.ttl

    # -- API keys --------------------------------------------------------------------------------------

    async def api_key(self, secret: str) -> KeyRecord | None:
        digest = api_key_digest(secret)
        now = time.monotonic()
        record = self._keys.get(digest)
        if record is not None and record.cached_until > now:
            return record if record.expires_at is None or record.expires_at > time.time() else None
        if self._negative.get(digest, 0.0) > now:
            return None
        generation = self._generation
        async with self.sessionmaker() as session:
            row = (
                await session.execute(
                    select(ApiKey.id, ApiKey.user_id, ApiKey.expires_at, User.revision)
                    .join(User, User.id == ApiKey.user_id)
                    .where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))
                )
            ).one_or_none()
        if row is None:
            if len(self._negative) > 10_000:
                self._negative.clear()
            self._negative[digest] = now + _NEGATIVE_TTL
            return None
        record = KeyRecord(
            id=row.id,
            user_id=row.user_id,
            user_revision=row.revision,
            expires_at=row.expires_at.timestamp() if row.expires_at else None,
            cached_until=now + self.ttl,
        )
        if generation == self._generation:
            self._keys[digest] = record
        if record.expires_at is not None and record.expires_at <= time.time():
            return None
        return record

    def drop_key(self, secret: str) -> None:
        self._keys.pop(api_key_digest(secret), None)

    def note_key_use(self, key_id: UUID) -> None:
        self._used_keys.add(key_id)

    async def flush_key_use(self) -> None:
        """Write ``last_used_at`` for the keys used since the last flush (batched: never per request)."""
        used, self._used_keys = self._used_keys, set()
        if not used:
            return
        async with self.sessionmaker.begin() as session:
            await session.execute(
                ApiKey.__table__.update()  # type: ignore[attr-defined]
                .where(ApiKey.id.in_(used))
                .values(last_used_at=func.now())
            )

    # -- external (OIDC) subjects ----------------------------------------------------------------------

    async def external_account(self, token: ExternalToken, signup_plan: str) -> UUID:
        key = (token.issuer, token.subject)
        known = self._external.get(key)
        if known is not None:
            return known
        async with self.sessionmaker.begin() as session:
            user_id = await _find_or_create_external(session, token, signup_plan, self.region)
        self._external[key] = user_id
        return user_id

    def drop_external(self, token: ExternalToken) -> None:
        """The account this subject signed in to is gone (deleted): its next sign-in makes a new one."""
        self._external.pop((token.issuer, token.subject), None)

    # -- internal tokens -------------------------------------------------------------------------------

    def internal_token(self, account: Account, api_key_id: UUID | None) -> str:
        """The token forwarded to services: minted once and reused for half its lifetime."""
        now = time.time()
        cached = account.internal.get(api_key_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        identity = InternalIdentity(
            user_id=account.id,
            role="admin" if account.role == "admin" else "user",
            plan=account.plan.claims(),
            api_key_id=api_key_id,
        )
        token = mint_internal_token(self.tokens.signing_key, identity, ttl=self.internal_ttl)
        account.internal[api_key_id] = (token, now + self.internal_ttl / 2)
        return token


async def _find_or_create_external(
    session: AsyncSession, token: ExternalToken, plan: str, region: str
) -> UUID:
    from parley_gateway.accounts import create_external_user

    found = (
        await session.execute(
            select(User.id).where(
                User.external_issuer == token.issuer, User.external_subject == token.subject
            )
        )
    ).scalar_one_or_none()
    if found is not None:
        return found
    return await create_external_user(session, token, plan, region)
