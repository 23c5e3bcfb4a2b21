"""Redis keys of one user's limits. Every key carries the hash tag ``{user_id}``.

The quota ``used`` counters and the ``seeded`` marker follow :mod:`parley_common.quota` (shared with
usage); everything else here is the gateway's own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

from parley_common.quota import period_end, seeded_key, used_key

_MARGIN = 2 * 86400  # used counters outlive their period a little, for late settlements and usage's reads


@dataclass(frozen=True, slots=True)
class Periods:
    """The current UTC day and month, recomputed only when the day changes."""

    day_end: float  # epoch seconds
    month_end: float
    day_at: datetime
    day_ttl: int
    month_ttl: int

    @classmethod
    def at(cls, now: float) -> Periods:
        at = datetime.fromtimestamp(now, UTC)
        day_end = period_end("day", at).timestamp()
        month_end = period_end("month", at).timestamp()
        return cls(day_end, month_end, at, int(day_end - now) + _MARGIN, int(month_end - now) + _MARGIN)


_periods = Periods.at(time.time())


def current_periods() -> Periods:
    global _periods
    now = time.time()
    if now >= _periods.day_end:
        _periods = Periods.at(now)
    return _periods


def seconds_to(period: str) -> float:
    """Seconds until the current day or month ends (UTC)."""
    periods = current_periods()
    return (periods.day_end if period == "day" else periods.month_end) - time.time()


@dataclass(slots=True)
class UserKeys:
    user_id: UUID
    plans_revision: str
    user_revision: str
    seeded: str
    requests: str
    tokens: str
    streams: str
    reserved: str
    reservations: str
    reservation_expiries: str
    prefix: str
    _used: tuple[Periods, tuple[str, str]] | None = None

    @classmethod
    def build(cls, prefix: str, user_id: UUID) -> UserKeys:
        tag = f"{{{user_id}}}"
        return cls(
            user_id=user_id,
            plans_revision=f"{prefix}gw:plans:revision",
            user_revision=f"{prefix}gw:{tag}:revision",
            seeded=seeded_key(prefix),
            requests=f"{prefix}gw:{tag}:rpm",
            tokens=f"{prefix}gw:{tag}:tpm",
            streams=f"{prefix}gw:{tag}:streams",
            reserved=f"{prefix}quota:{tag}:reserved",
            reservations=f"{prefix}quota:{tag}:resv",
            reservation_expiries=f"{prefix}quota:{tag}:resv:exp",
            prefix=prefix,
        )

    def used(self, periods: Periods) -> tuple[str, str]:
        if self._used is None or self._used[0] is not periods:  # once a day per user, not per request
            self._used = (
                periods,
                (
                    used_key(self.prefix, self.user_id, "day", periods.day_at),
                    used_key(self.prefix, self.user_id, "month", periods.day_at),
                ),
            )
        return self._used[1]

    def admit_keys(self, periods: Periods) -> list[str]:
        day, month = self.used(periods)
        return [
            self.plans_revision,
            self.user_revision,
            self.seeded,
            self.requests,
            self.tokens,
            self.streams,
            day,
            month,
            self.reserved,
            self.reservations,
            self.reservation_expiries,
        ]

    def settle_keys(self, periods: Periods) -> list[str]:
        day, month = self.used(periods)
        return [
            day,
            month,
            self.reserved,
            self.reservations,
            self.reservation_expiries,
            self.streams,
            self.tokens,
        ]

    def renew_keys(self) -> list[str]:
        return [self.streams, self.reservation_expiries, self.reserved, self.reservations]


def auth_keys(prefix: str, ip: str, email_digest: str) -> list[str]:
    """Request rings for login/register attempts per client IP and per email (checked together)."""
    return [f"{prefix}gw:auth:ip:{ip}", f"{prefix}gw:auth:email:{email_digest}"]
