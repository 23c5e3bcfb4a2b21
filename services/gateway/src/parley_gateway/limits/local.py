"""Limits one replica enforces on its own while Redis is unavailable (the ``local`` failure policy).

Each replica grants only ``share`` of every limit, so a few replicas together stay near the plan's
figures even with no shared state. Quotas are harder: a replica cannot know what others spent, so it
grants at most ``share`` of the remaining amount it last saw from Redis for that user, or, with no figure
for them, ``share × unknown_fraction`` of the plan's smallest quota.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from uuid import UUID

from parley_gateway.plans import EffectivePlan


@dataclass
class _UserState:
    requests: deque[float] = field(default_factory=deque)
    tokens: float | None = None
    tokens_at: float = 0.0
    streams: int = 0
    quota_budget: float | None = None
    last_seen: float = 0.0


@dataclass(frozen=True)
class LocalRefusal:
    limit: str
    retry_after: float  # seconds


class LocalLimits:
    def __init__(self, share: float, window: float, unknown_fraction: float = 0.05) -> None:
        self.share = share
        self.unknown_fraction = unknown_fraction
        self.window = window
        self._users: dict[UUID, _UserState] = {}
        self._known_remaining: dict[UUID, int] = {}

    def remember_remaining(self, user_id: UUID, remaining: int) -> None:
        """The quota left for ``user_id`` according to Redis (basis of the local quota budget)."""
        self._known_remaining[user_id] = remaining

    def _state(self, user_id: UUID, now: float) -> _UserState:
        state = self._users.get(user_id)
        if state is None:
            if len(self._users) > 100_000:
                self._evict(now)
            state = self._users[user_id] = _UserState()
        state.last_seen = now
        return state

    def _evict(self, now: float) -> None:
        for user_id in [
            u for u, s in self._users.items() if now - s.last_seen > self.window and not s.streams
        ]:
            del self._users[user_id]

    def _share(self, limit: int) -> int:
        return max(1, math.floor(limit * self.share))

    def admit(
        self, user_id: UUID, plan: EffectivePlan, concerns: frozenset[str], cost: int
    ) -> LocalRefusal | None:
        """Check then take every concern in ``concerns`` (all or nothing); None when admitted."""
        now = time.monotonic()
        state = self._state(user_id, now)
        rpm = plan.requests_per_minute if "requests" in concerns else None
        if rpm is not None:
            while state.requests and state.requests[0] <= now - self.window:
                state.requests.popleft()
            if len(state.requests) >= self._share(rpm):
                return LocalRefusal("requests", state.requests[0] + self.window - now)
        tpm = plan.tokens_per_minute if "tokens" in concerns else None
        level = 0.0
        if tpm is not None:
            capacity = self._share(tpm)
            level = capacity if state.tokens is None else state.tokens
            level = min(capacity, level + (now - state.tokens_at) * capacity / self.window)
            if level < cost:
                return LocalRefusal("tokens", (cost - level) * self.window / capacity)
        streams = plan.concurrent_streams if "streams" in concerns else None
        if streams is not None and state.streams >= self._share(streams):
            return LocalRefusal("streams", 1.0)
        if "quota" in concerns:
            if state.quota_budget is None:
                known = self._known_remaining.get(user_id)
                if known is None:
                    quotas = [q for q in (plan.daily_token_quota, plan.monthly_token_quota) if q is not None]
                    known = int(min(quotas, default=0) * self.unknown_fraction)
                state.quota_budget = max(0, known) * self.share
            if state.quota_budget < cost:
                return LocalRefusal("quota", 5.0)
        if rpm is not None:
            state.requests.append(now)
        if tpm is not None:
            state.tokens, state.tokens_at = level - cost, now
        if streams is not None:
            state.streams += 1
        if "quota" in concerns and state.quota_budget is not None:
            state.quota_budget -= cost
        return None

    def release(self, user_id: UUID, concerns: frozenset[str], cost: int, actual: int) -> None:
        state = self._users.get(user_id)
        if state is None:
            return
        if "streams" in concerns:
            state.streams = max(0, state.streams - 1)
        if "quota" in concerns and state.quota_budget is not None:
            state.quota_budget += cost - actual
        if "tokens" in concerns and state.tokens is not None:
            state.tokens += max(0, cost - actual)

    def reset_quota_budgets(self) -> None:
        """Redis is authoritative again: the next outage starts from fresh figures."""
        for state in self._users.values():
            state.quota_budget = None
