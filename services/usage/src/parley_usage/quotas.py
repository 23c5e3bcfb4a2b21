"""Reconciling the gateway's Redis quota counters from the ledger (the layout is in ``parley_common.quota``).

The gateway ``INCRBY``s a user's ``used`` counter when it settles a request; the ledger is the billing
truth. ``reconcile`` raises each counter of the current UTC day and month to the ledger's total for that
period when it is lower, and never lowers one (settled requests whose events have not reached the ledger
yet would be forgotten). It reads the totals from ``period_totals``, which the worker updates in the same
transaction as the ledger rows, so it never scans the ledger.

Redis losing its data (a restart without persistence, a flush, a failover to an empty replica) is
detected by the missing ``seeded`` marker: ``ensure_seeded`` then re-seeds every counter from the ledger
and only afterwards sets the marker, which is what tells the gateway it may trust the counters again
(until then it applies its Redis-failure policy for quotas, so no burst of over-quota traffic gets in).
A nonce written before the re-seed and checked before the marker is set proves Redis did not lose its
data again half-way.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis
from parley_common.logs import get_logger
from parley_common.quota import PERIODS, Period, period_end, period_start, seeded_key, used_key
from parley_common.settings import RedisSettings
from sqlalchemy import Engine, text

from parley_usage.metrics import QUOTA_COUNTERS_RAISED, QUOTA_RESEEDS, QUOTA_SEEDED

log = get_logger(__name__)

# Raise KEYS[1] to ARGV[1] if lower; a key created here expires at ARGV[2] (ms since epoch), an existing
# one keeps the expiry the gateway gave it. Atomic with respect to the gateway's INCRBY.
_RAISE = """
local target = tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if current >= target then
  return 0
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
else
  redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2])
end
return 1
"""
_CHUNK = 1000  # commands per pipeline round trip


@dataclass(frozen=True)
class ReconcileReport:
    checked: int
    raised: int


def redis_client(settings: RedisSettings) -> redis.Redis:
    """A Redis client with the settings' explicit timeouts.

    Reconciliation sends pipelines of a thousand commands, so a reply may take longer than one
    gateway command: at least a second, never unbounded.
    """
    return redis.Redis.from_url(
        settings.redis_url.get_secret_value(),
        socket_connect_timeout=settings.redis_connect_timeout,
        socket_timeout=max(settings.redis_command_timeout, 1.0),
        health_check_interval=30,
    )


def _reseeding_key(prefix: str) -> str:
    return f"{prefix}quota:reseeding"


def ledger_totals(engine: Engine, period: Period, at: datetime) -> list[tuple[uuid.UUID, int]]:
    """(user, tokens) for every user with usage in the period containing ``at``."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT user_id, tokens FROM usage.period_totals "
                "WHERE period = :period AND period_start = :start AND tokens > 0"
            ),
            {"period": period, "start": period_start(period, at).date()},
        ).all()
    return [(row.user_id, int(row.tokens)) for row in rows]


def reconcile(
    engine: Engine, client: redis.Redis, prefix: str, *, now: datetime | None = None
) -> ReconcileReport:
    """Raise every counter of the current day and month to the ledger's total where it is lower."""
    now = now or datetime.now(UTC)
    script = client.register_script(_RAISE)
    checked = raised = 0
    for period in PERIODS:
        totals = ledger_totals(engine, period, now)
        expire_at = int((period_end(period, now) + timedelta(days=1)).timestamp() * 1000)
        for start in range(0, len(totals), _CHUNK):
            pipe = client.pipeline(transaction=False)
            for user_id, tokens in totals[start : start + _CHUNK]:
                script(keys=[used_key(prefix, user_id, period, now)], args=[tokens, expire_at], client=pipe)
            results = pipe.execute()
            checked += len(results)
            raised += sum(int(r) for r in results)
    QUOTA_COUNTERS_RAISED.inc(raised)
    if raised:
        log.info("quota.counters_raised", raised=raised, checked=checked)
    return ReconcileReport(checked, raised)


def reconcile_and_mark(
    engine: Engine, client: redis.Redis, prefix: str, *, now: datetime | None = None
) -> ReconcileReport:
    """:func:`reconcile`, then set the ``seeded`` marker, unless Redis lost its data in between."""
    nonce = uuid.uuid4().hex
    client.set(_reseeding_key(prefix), nonce, ex=3600)
    report = reconcile(engine, client, prefix, now=now)
    if client.get(_reseeding_key(prefix)) != nonce.encode():
        QUOTA_SEEDED.set(0)
        raise RuntimeError("Redis lost its data during the reconciliation; the marker stays unset")
    client.set(seeded_key(prefix), datetime.now(UTC).isoformat())
    client.delete(_reseeding_key(prefix))
    QUOTA_SEEDED.set(1)
    return report


def ensure_seeded(engine: Engine, client: redis.Redis, prefix: str) -> ReconcileReport | None:
    """Re-seed the counters when the ``seeded`` marker is missing; None when it was there."""
    if client.exists(seeded_key(prefix)):
        QUOTA_SEEDED.set(1)
        return None
    QUOTA_SEEDED.set(0)
    log.warning("quota.seeded_marker_missing", action="re-seeding every counter from the ledger")
    report = reconcile_and_mark(engine, client, prefix)
    QUOTA_RESEEDS.inc()
    log.info("quota.reseeded", counters=report.checked, raised=report.raised)
    return report
