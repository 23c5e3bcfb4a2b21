"""``quota.threshold_crossed.v1`` at 80 % and 100 % of a quota: once per user, quota period and threshold.

Each usage event carries the caller's daily and monthly quotas as they were at the call (None means
unlimited). The ledger statement returns every period whose new total reached 80 % or more of the quota
the latest event of that period carried (:mod:`parley_usage.ledger`). Each threshold reached is recorded
in ``quota_thresholds`` (primary key: user, period, period start, threshold) with ``ON CONFLICT DO
NOTHING``, and only a row actually inserted gets its event written to the outbox, in the same transaction
as the ledger rows that reached it. A redelivered batch inserts no ledger row, so it reaches nothing; and a
later batch finds the threshold row already there. The event id derives from the key, so a duplicate
publish downstream still carries the same id.

Tokens counted against a quota are prompt + completion tokens of every ledger row (cached and estimated
calls included): the same total usage raises the gateway's Redis counters to.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Literal

from parley_common.events import QuotaThresholdCrossedV1
from parley_common.logs import get_logger
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from parley_usage.metrics import THRESHOLDS_ANNOUNCED

log = get_logger(__name__)

THRESHOLDS: tuple[Literal[80, 100], ...] = (80, 100)
_NAMESPACE = uuid.UUID("8a5f6f0e-5b7c-4d0c-9a55-3f1c1b7d2e41")

_RECORD_CROSSINGS = text(
    """
    INSERT INTO usage.quota_thresholds (user_id, period, period_start, threshold_percent, quota_tokens,
                                        used_tokens, event_id)
    SELECT * FROM unnest(CAST(:user_id AS uuid[]), CAST(:period AS text[]), CAST(:period_start AS date[]),
                         CAST(:threshold AS smallint[]), CAST(:quota AS bigint[]), CAST(:used AS bigint[]),
                         CAST(:event_id AS uuid[]))
    ORDER BY 1, 2, 3, 4
    ON CONFLICT DO NOTHING
    RETURNING event_id
    """
)
_OUTBOX = text(
    """
    INSERT INTO usage.outbox (event_id, event_type, payload)
    SELECT * FROM unnest(CAST(:event_id AS uuid[]), CAST(:event_type AS text[]), CAST(:payload AS jsonb[]))
    """
)


@dataclass(frozen=True)
class Reached:
    """A period whose total reached at least the lowest threshold of its quota."""

    user_id: uuid.UUID | str
    period: str
    period_start: date
    used: int
    quota: int
    plan: str | None


def crossing_event_id(user_id: uuid.UUID | str, period: str, start: date, threshold: int) -> uuid.UUID:
    """The id of the one event announcing this crossing."""
    return uuid.uuid5(_NAMESPACE, f"{user_id}:{period}:{start.isoformat()}:{threshold}")


def crossings(reached: Sequence[Reached]) -> list[QuotaThresholdCrossedV1]:
    """The threshold events ``reached`` calls for (before deduplication against earlier ones)."""
    events = []
    for item in reached:
        for threshold in THRESHOLDS:
            if item.used * 100 < threshold * item.quota:
                continue
            events.append(
                QuotaThresholdCrossedV1(
                    id=crossing_event_id(item.user_id, item.period, item.period_start, threshold),
                    source="usage",
                    subject=str(item.user_id),
                    user_id=uuid.UUID(str(item.user_id)),
                    period="day" if item.period == "day" else "month",
                    period_start=datetime.combine(item.period_start, datetime.min.time(), tzinfo=UTC),
                    threshold_percent=threshold,
                    quota_tokens=item.quota,
                    used_tokens=item.used,
                    plan=item.plan,
                    traceparent=None,
                )
            )
    return events


async def announce_crossings(conn: AsyncConnection, reached: Sequence[Reached]) -> int:
    """Record every threshold ``reached`` calls for; write the new ones to the outbox. Returns how many."""
    candidates = crossings(reached)
    if not candidates:
        return 0
    recorded = await conn.execute(
        _RECORD_CROSSINGS,
        {
            "user_id": [c.user_id for c in candidates],
            "period": [c.period for c in candidates],
            "period_start": [c.period_start.date() for c in candidates],
            "threshold": [c.threshold_percent for c in candidates],
            "quota": [c.quota_tokens for c in candidates],
            "used": [c.used_tokens for c in candidates],
            "event_id": [c.id for c in candidates],
        },
    )
    new_ids = {row.event_id for row in recorded}
    fresh = [c for c in candidates if c.id in new_ids]
    if not fresh:
        return 0
    await conn.execute(
        _OUTBOX,
        {
            "event_id": [c.id for c in fresh],
            "event_type": [c.type for c in fresh],
            "payload": [json.dumps(c.model_dump(mode="json")) for c in fresh],
        },
    )
    for event in fresh:
        THRESHOLDS_ANNOUNCED.labels(event.period, str(event.threshold_percent)).inc()
        log.info(
            "quota.threshold_crossed",
            user_id=str(event.user_id),
            period=event.period,
            period_start=event.period_start.date().isoformat(),
            threshold_percent=event.threshold_percent,
            event_id=str(event.id),
        )
    return len(fresh)
