"""The Redis layout of token-quota counters: the contract between the gateway and usage.

The gateway reserves tokens before forwarding a request and settles them with the real usage afterwards
(its Lua scripts own every key below except as stated). The usage service reconciles the *used* counters
from the ledger, which is the billing truth:

- ``used_key``: tokens settled in one period (an integer). The gateway ``INCRBY``s it on settle. Usage
  raises it to the ledger's total for the period when it is lower (it never lowers it: settled requests
  whose events have not reached the ledger yet would be forgotten).
- ``seeded_key``: present while Redis holds counters that usage has reconciled. Usage sets it after a full
  reconciliation; when it is missing (Redis restarted empty, or was flushed), the gateway must not trust
  zero counters: it applies its Redis-failure policy for quotas until usage has re-seeded them.

Keys of one user share the hash tag ``{user_id}`` so a Lua script touching several of them stays in one
Redis Cluster slot. Periods are UTC calendar days and months.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal
from uuid import UUID

Period = Literal["day", "month"]
PERIODS: tuple[Period, ...] = ("day", "month")


def period_start(period: Period, at: datetime) -> datetime:
    """Start (UTC) of the period containing ``at``."""
    at = at.astimezone(UTC)
    if period == "day":
        return at.replace(hour=0, minute=0, second=0, microsecond=0)
    return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def period_end(period: Period, at: datetime) -> datetime:
    """End (exclusive, UTC) of the period containing ``at``."""
    start = period_start(period, at)
    if period == "day":
        return start + timedelta(days=1)
    return (start + timedelta(days=32)).replace(day=1)


def period_id(period: Period, at: datetime) -> str:
    """``d20261127`` or ``m202611``."""
    start = period_start(period, at)
    return start.strftime("d%Y%m%d") if period == "day" else start.strftime("m%Y%m")


def used_key(prefix: str, user_id: UUID | str, period: Period, at: datetime) -> str:
    """Tokens settled by ``user_id`` in the period containing ``at``."""
    return f"{prefix}quota:{{{user_id}}}:used:{period_id(period, at)}"


def seeded_key(prefix: str) -> str:
    """Marker usage sets once the counters have been reconciled from the ledger."""
    return f"{prefix}quota:seeded"
