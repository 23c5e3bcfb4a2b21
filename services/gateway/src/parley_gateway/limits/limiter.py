"""Admission, settlement and leases: what the routes call.

``admit`` runs one script for everything a request needs (request slot, tokens, stream lease, quota
reservation). Settlement never makes a request wait: it is queued and sent in pipelined batches, and a
settlement that cannot reach Redis is dropped on purpose (the reservation expires with its lease, and
usage raises the ``used`` counters to the ledger's totals, which include this call). Leases of open
requests are renewed in the background, so a stream outlives the lease but a dead replica's do not.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from parley_common.logs import get_logger

from parley_gateway.config import Settings
from parley_gateway.limits.keys import UserKeys, current_periods, seconds_to
from parley_gateway.limits.local import LocalLimits
from parley_gateway.limits.store import DEADLINE, RedisStore, StoreUnavailable
from parley_gateway.plans import EffectivePlan

log = get_logger(__name__)

Concern = Literal["requests", "tokens", "streams", "quota"]


@dataclass(slots=True)
class Decision:
    """Every limit in play with what is left of it (None: not applicable or unknown)."""

    window: float
    requests: int | None = None
    requests_left: int | None = None
    requests_reset: float = 0.0
    tokens: int | None = None
    tokens_left: int | None = None
    tokens_reset: float = 0.0
    streams: int | None = None
    streams_left: int | None = None
    daily: int | None = None
    daily_left: int | None = None
    monthly: int | None = None
    monthly_left: int | None = None
    refused: str | None = None
    retry_after: float = 0.0


class RateLimited(Exception):
    def __init__(self, decision: Decision) -> None:
        super().__init__(decision.refused)
        self.decision = decision


class LimitsUnavailable(Exception):
    """Redis is away and this concern's policy is to fail closed."""

    def __init__(self, concern: str) -> None:
        super().__init__(concern)
        self.concern = concern


class StaleIdentity(Exception):
    """The user or the plans changed since this replica cached them."""

    def __init__(self, plans_revision: str, user_revision: str) -> None:
        super().__init__("stale")
        self.plans_revision = plans_revision
        self.user_revision = user_revision


@dataclass(slots=True)
class Grant:
    id: str
    keys: UserKeys
    plan: EffectivePlan
    concerns: frozenset[str]
    cost: int
    model_call: bool
    remote: frozenset[str]  # concerns Redis holds for this request
    local: frozenset[str]  # concerns this replica took on its own
    decision: Decision
    done: bool = field(default=False)


def _opt(value: Any) -> int | None:
    number = int(value)
    return None if number < 0 else number


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Limiter:
    def __init__(self, store: RedisStore, settings: Settings) -> None:
        self.store = store
        self.window = settings.limits_window_seconds
        self.window_ms = int(settings.limits_window_seconds * 1000)
        self.lease_ms = int(settings.limits_lease_seconds * 1000)
        self.policies: dict[str, str] = {
            "requests": settings.limits_failure_requests,
            "tokens": settings.limits_failure_tokens,
            "streams": settings.limits_failure_streams,
            "quota": settings.limits_failure_quota,
        }
        self.local = LocalLimits(
            settings.limits_local_share, settings.limits_window_seconds, settings.limits_local_quota_fraction
        )
        self.auth_limits = (settings.auth_ip_per_minute, settings.auth_email_per_minute)
        self.auth_local = LocalLimits(1.0, settings.limits_window_seconds)
        self.quota_trusted = True
        self._active: dict[str, Grant] = {}
        self._renewer: asyncio.Task[None] | None = None

    # -- admission -------------------------------------------------------------------------------------

    def concerns(self, plan: EffectivePlan, *, model_call: bool, stream: bool, cost: int) -> frozenset[str]:
        found: set[str] = set()
        if plan.requests_per_minute is not None:
            found.add("requests")
        if model_call and plan.tokens_per_minute is not None and cost > 0:
            found.add("tokens")
        if stream and plan.concurrent_streams is not None:
            found.add("streams")
        if model_call and plan.has_quota:
            found.add("quota")
        return frozenset(found)

    async def admit(
        self,
        keys: UserKeys,
        plan: EffectivePlan,
        revisions: tuple[str, str],
        *,
        cost: int,
        stream: bool,
        model_call: bool,
    ) -> Grant:
        concerns = self.concerns(plan, model_call=model_call, stream=stream, cost=cost)
        grant = Grant(
            id=uuid.uuid4().hex,
            keys=keys,
            plan=plan,
            concerns=concerns,
            cost=cost,
            model_call=model_call,
            remote=frozenset(),
            local=frozenset(),
            decision=Decision(self.window),
        )
        for _ in range(2):  # a second pass only when the script found the quota counters unseeded
            local_quota = "quota" in concerns and not self.quota_trusted
            if local_quota:
                self._admit_local(grant, frozenset({"quota"}))
            if self.store.available:
                try:
                    reply = await self._admit_remote(grant, revisions, check_quota=not local_quota)
                except StoreUnavailable:
                    reply = None
                except StaleIdentity:
                    self._release_local(grant, 0)
                    raise
                if reply == "unseeded":
                    continue
                if reply == "admitted":
                    return grant
            # Redis is away: each concern follows its policy.
            self._admit_local(grant, concerns - grant.local)
            return grant
        raise LimitsUnavailable("quota")

    async def _admit_remote(self, grant: Grant, revisions: tuple[str, str], *, check_quota: bool) -> str:
        plan, concerns = grant.plan, grant.concerns
        quota = "quota" in concerns and check_quota
        args = (
            revisions[0],
            revisions[1],
            DEADLINE,
            grant.id,
            self.window_ms,
            plan.requests_per_minute if "requests" in concerns else 0,
            plan.tokens_per_minute if "tokens" in concerns else 0,
            grant.cost if grant.model_call else 0,
            plan.concurrent_streams if "streams" in concerns else 0,
            self.lease_ms,
            _quota_arg(plan.daily_token_quota) if quota else -1,
            _quota_arg(plan.monthly_token_quota) if quota else -1,
            1 if quota else 0,
        )
        reply = await self.store.run("admit", grant.keys.admit_keys(current_periods()), args)
        status = int(reply[0])
        self.store.observe_clock(int(reply[1]))
        if status == 2:
            raise StaleIdentity(_text(reply[2]), _text(reply[3]))
        if status == 3:
            raise StoreUnavailable("deadline passed")
        if status == 4:
            if self.quota_trusted:
                log.warning("limits.quota_counters_unseeded")
            self.quota_trusted = False
            return "unseeded"
        if int(reply[13]) == 1 and not self.quota_trusted:
            log.info("limits.quota_counters_seeded")
            self.quota_trusted = True
            self.local.reset_quota_budgets()
        decision = self._decision(plan, concerns, reply)
        grant.decision = decision
        if status == 0:
            self._release_local(grant, 0)
            raise RateLimited(decision)
        grant.remote = concerns - grant.local
        if quota:
            left = [v for v in (decision.daily_left, decision.monthly_left) if v is not None]
            if left:
                self.local.remember_remaining(grant.keys.user_id, min(left))
        if "streams" in grant.remote or "quota" in grant.remote:
            self._active[grant.id] = grant
        return "admitted"

    def _admit_local(self, grant: Grant, concerns: frozenset[str]) -> None:
        if not concerns:
            return
        closed = sorted(c for c in concerns if self.policies[c] == "closed")
        if closed:
            self._release_local(grant, 0)
            raise LimitsUnavailable(closed[0])
        refusal = self.local.admit(grant.keys.user_id, grant.plan, concerns, grant.cost)
        if refusal is not None:
            self._release_local(grant, 0)
            if refusal.limit == "quota":
                raise LimitsUnavailable("quota")
            decision = self._plan_decision(grant.plan, grant.concerns)
            decision.refused, decision.retry_after = refusal.limit, refusal.retry_after
            raise RateLimited(decision)
        grant.local = grant.local | concerns
        grant.decision = self._plan_decision(grant.plan, grant.concerns)

    def _release_local(self, grant: Grant, actual: int) -> None:
        if grant.local:
            self.local.release(grant.keys.user_id, grant.local, grant.cost, actual)
            grant.local = frozenset()

    def _plan_decision(self, plan: EffectivePlan, concerns: frozenset[str]) -> Decision:
        return Decision(
            self.window,
            requests=plan.requests_per_minute if "requests" in concerns else None,
            tokens=plan.tokens_per_minute if "tokens" in concerns else None,
            streams=plan.concurrent_streams if "streams" in concerns else None,
            daily=plan.daily_token_quota if "quota" in concerns else None,
            monthly=plan.monthly_token_quota if "quota" in concerns else None,
        )

    def _decision(self, plan: EffectivePlan, concerns: frozenset[str], reply: list[Any]) -> Decision:
        decision = self._plan_decision(plan, concerns)
        decision.requests_left = _opt(reply[6])
        decision.requests_reset = int(reply[7]) / 1000
        decision.tokens_left = _opt(reply[8])
        decision.tokens_reset = int(reply[9]) / 1000
        decision.streams_left = _opt(reply[10])
        decision.daily_left = _opt(reply[11])
        decision.monthly_left = _opt(reply[12])
        refused = _text(reply[4])
        if refused:
            decision.refused = refused
            retry_ms = int(reply[5])
            if retry_ms < 0:  # the quota itself is spent: come back when the period ends
                retry = seconds_to("day" if refused == "quota_daily" else "month")
            else:
                retry = retry_ms / 1000
            decision.retry_after = retry
        return decision

    # -- settlement and leases -------------------------------------------------------------------------

    def settle(self, grant: Grant, actual: int) -> None:
        """Record the real usage of an admitted request and release what it held (never waits)."""
        if grant.done:
            return
        grant.done = True
        self._active.pop(grant.id, None)
        self._release_local(grant, actual)
        if not grant.model_call and "streams" not in grant.remote:
            return
        periods = current_periods()
        refundable = grant.cost if "tokens" in grant.remote else 0
        args = [
            grant.id,
            max(0, actual),
            refundable,
            grant.plan.tokens_per_minute or 0,
            self.window_ms,
            periods.day_ttl,
            periods.month_ttl,
        ]
        self.store.fire("settle", grant.keys.settle_keys(periods), args)

    async def _renew_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            grants = [g for g in self._active.values() if not g.done]
            if not grants:
                continue
            for grant in grants:
                self.store.fire("renew", grant.keys.renew_keys(), [grant.id, self.lease_ms])

    def start(self) -> None:
        self._renewer = asyncio.get_running_loop().create_task(self._renew_forever(self.lease_ms / 3000))

    async def stop(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        await self.store.drain()

    # -- reads, revisions and account endpoints -----------------------------------------------------------

    async def peek(self, keys: UserKeys, plan: EffectivePlan) -> dict[str, Any] | None:
        """What is left of every limit, without taking anything; None while Redis is away."""
        args = (
            self.window_ms,
            plan.requests_per_minute or 0,
            plan.tokens_per_minute or 0,
            plan.concurrent_streams or 0,
        )
        try:
            reply = await self.store.run("peek", keys.admit_keys(current_periods()), args)
        except StoreUnavailable:
            return None
        names = [
            "now",
            "plans_revision",
            "user_revision",
            "seeded",
            "requests_left",
            "requests_reset",
            "tokens_left",
            "tokens_reset",
            "streams_left",
            "used_day",
            "used_month",
            "reserved",
        ]
        values: dict[str, Any] = dict(zip(names, reply, strict=True))
        values["plans_revision"], values["user_revision"] = _text(reply[1]), _text(reply[2])
        return values

    async def publish_revision(self, key: str, revision: int) -> bool:
        """Tell every replica that a cached user or plan changed (after the change committed)."""
        try:
            await self.store.run("publish_revision", [key], [revision])
        except StoreUnavailable:
            log.warning("limits.revision_not_published", key=key)
            return False
        return True

    async def allow_auth_attempt(self, keys: list[str]) -> float | None:
        """Seconds to wait before another login/register attempt from this IP or for this email."""
        ip_limit, email_limit = self.auth_limits
        if self.store.available:
            try:
                admitted, retry_ms = await self.store.run(
                    "window", keys, [self.window_ms, ip_limit, email_limit]
                )
                return None if int(admitted) == 1 else int(retry_ms) / 1000
            except StoreUnavailable:
                pass
        if self.policies["requests"] == "closed":
            raise LimitsUnavailable("requests")
        for key, limit in zip(keys, self.auth_limits, strict=True):
            subject = uuid.uuid5(uuid.NAMESPACE_URL, key)
            plan = _AUTH_PLAN_CACHE.get(limit) or _auth_plan(limit)
            refusal = self.auth_local.admit(subject, plan, frozenset({"requests"}), 0)
            if refusal is not None:
                return refusal.retry_after
        return None


def _quota_arg(value: int | None) -> int:
    return -1 if value is None else value


_AUTH_PLAN_CACHE: dict[int, EffectivePlan] = {}


def _auth_plan(limit: int) -> EffectivePlan:
    plan = EffectivePlan(
        name="auth",
        description="",
        allowed_models=(),
        default_model=None,
        model_routes={},
        requests_per_minute=limit,
        tokens_per_minute=None,
        concurrent_streams=None,
        daily_token_quota=None,
        monthly_token_quota=None,
        max_output_tokens=0,
        cache="off",
        rag_max_documents=0,
        rag_max_document_bytes=0,
    )
    _AUTH_PLAN_CACHE[limit] = plan
    return plan


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
