"""Writing the ledger: a batch of usage events in one transaction, whatever the number of deliveries.

One statement inserts the batch into the partitioned ledger (``ON CONFLICT DO NOTHING`` on the dedup key
``(event_id, occurred_at)``) and adds exactly the rows it inserted to the daily rollups and to the period
totals: a redelivered event inserts nothing, so it adds nothing anywhere and the aggregates can't drift
from the ledger. The same statement compares the new period totals with the quotas the events carry and
returns the periods that reached 80 % or more; :mod:`parley_usage.thresholds` records and announces the
crossings, still in the same transaction.

Concurrent batches for the same user serialise on that user's ``period_totals`` rows (row locks held to
commit), so each sees the other's tokens and a threshold can't be missed between two of them. Rows are
written in key order so two batches never wait on each other in opposite orders.

The batch travels as one JSON document (``json_to_recordset``): PostgreSQL parses it in C, which costs the
worker far less than adapting fourteen arrays element by element.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from parley_common.events import TokensConsumedV1
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from parley_usage.metrics import LEDGER_DUPLICATES, LEDGER_ROWS
from parley_usage.thresholds import THRESHOLDS, Reached, announce_crossings

_FIELDS = {
    "id",
    "time",
    "user_id",
    "request_id",
    "model",
    "provider",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "cached",
    "estimated",
    "plan",
    "api_key_id",
    "conversation_id",
    "daily_token_quota",
    "monthly_token_quota",
}

# The quota of each period is the one the latest event of the batch in that period carried. Whitespace
# is collapsed so the statement stays under psycopg's 4 kB limit for caching its parsed form.
_RECORD = text(
    " ".join(
        f"""
    WITH incoming AS (
        SELECT * FROM json_to_recordset(CAST(:events AS json)) AS t(
            id uuid, time timestamptz, user_id uuid, request_id text, model text, provider text,
            status text, prompt_tokens bigint, completion_tokens bigint, cached boolean, estimated boolean,
            plan text, api_key_id uuid, conversation_id uuid, daily_token_quota bigint,
            monthly_token_quota bigint)
    ),
    inserted AS (
        INSERT INTO usage.ledger (event_id, occurred_at, user_id, request_id, model, provider, status,
                                  prompt_tokens, completion_tokens, cached, estimated, plan, api_key_id,
                                  conversation_id)
        SELECT id, time, user_id, request_id, model, provider, status, prompt_tokens, completion_tokens,
               cached, estimated, plan, api_key_id, conversation_id
        FROM incoming ORDER BY id
        ON CONFLICT (event_id, occurred_at) DO NOTHING
        RETURNING user_id, occurred_at, model, provider, prompt_tokens, completion_tokens, cached, estimated
    ),
    daily AS (
        SELECT user_id, (occurred_at AT TIME ZONE 'UTC')::date AS day, model, provider,
               sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,
               count(*) AS requests,
               count(*) FILTER (WHERE cached) AS cached_requests,
               count(*) FILTER (WHERE estimated) AS estimated_requests,
               coalesce(sum(prompt_tokens + completion_tokens) FILTER (WHERE cached), 0) AS cached_tokens,
               coalesce(sum(prompt_tokens + completion_tokens) FILTER (WHERE estimated), 0) AS estimated_tokens
        FROM inserted GROUP BY 1, 2, 3, 4
    ),
    rolled AS (
        INSERT INTO usage.daily_rollups AS r (user_id, day, model, provider, prompt_tokens,
            completion_tokens, requests, cached_requests, estimated_requests, cached_tokens, estimated_tokens)
        SELECT user_id, day, model, provider, prompt_tokens, completion_tokens, requests, cached_requests,
               estimated_requests, cached_tokens, estimated_tokens
        FROM daily ORDER BY user_id, day, model, provider
        ON CONFLICT (user_id, day, model, provider) DO UPDATE SET
            prompt_tokens = r.prompt_tokens + excluded.prompt_tokens,
            completion_tokens = r.completion_tokens + excluded.completion_tokens,
            requests = r.requests + excluded.requests,
            cached_requests = r.cached_requests + excluded.cached_requests,
            estimated_requests = r.estimated_requests + excluded.estimated_requests,
            cached_tokens = r.cached_tokens + excluded.cached_tokens,
            estimated_tokens = r.estimated_tokens + excluded.estimated_tokens,
            updated_at = now()
    ),
    added AS (
        SELECT user_id, 'day'::text AS period, day AS period_start,
               sum(prompt_tokens + completion_tokens) AS tokens
        FROM daily GROUP BY 1, 3
        UNION ALL
        SELECT user_id, 'month', date_trunc('month', day)::date, sum(prompt_tokens + completion_tokens)
        FROM daily GROUP BY 1, 3
    ),
    counted AS (
        INSERT INTO usage.period_totals AS p (user_id, period, period_start, tokens)
        SELECT user_id, period, period_start, tokens FROM added ORDER BY user_id, period, period_start
        ON CONFLICT (user_id, period, period_start) DO UPDATE SET tokens = p.tokens + excluded.tokens
        RETURNING user_id, period, period_start, tokens
    ),
    quotas AS (
        SELECT DISTINCT ON (user_id, period, period_start) user_id, period, period_start, quota, plan
        FROM (
            SELECT user_id, 'day' AS period, (time AT TIME ZONE 'UTC')::date AS period_start,
                   daily_token_quota AS quota, plan, time
            FROM incoming WHERE daily_token_quota > 0
            UNION ALL
            SELECT user_id, 'month', date_trunc('month', time AT TIME ZONE 'UTC')::date,
                   monthly_token_quota, plan, time
            FROM incoming WHERE monthly_token_quota > 0
        ) q
        ORDER BY user_id, period, period_start, time DESC
    ),
    reached AS (
        SELECT c.user_id, c.period, c.period_start, c.tokens AS used, q.quota, q.plan
        FROM counted c
        JOIN added a USING (user_id, period, period_start)
        JOIN quotas q USING (user_id, period, period_start)
        WHERE a.tokens > 0 AND c.tokens * 100 >= {min(THRESHOLDS)} * q.quota
    )
    SELECT (SELECT count(*) FROM inserted) AS inserted,
           (SELECT coalesce(json_agg(reached), '[]'::json) FROM reached) AS reached
    """.split()
    )
)


@dataclass(frozen=True)
class BatchResult:
    inserted: int
    duplicates: int
    thresholds_announced: int


async def record_batch(engine: AsyncEngine, events: Sequence[TokensConsumedV1]) -> BatchResult:
    """Write ``events`` (one transaction); redelivered events change nothing."""
    async with engine.begin() as conn:
        result = await record_batch_in(conn, events)
    # Counted once committed: a batch rolled back and retried must not count twice.
    LEDGER_ROWS.inc(result.inserted)
    LEDGER_DUPLICATES.inc(result.duplicates)
    return result


async def record_batch_in(conn: AsyncConnection, events: Sequence[TokensConsumedV1]) -> BatchResult:
    """:func:`record_batch` inside a transaction the caller owns (who counts the rows once it commits)."""
    unique = {event.id: event for event in events}.values()
    document = "[" + ",".join(event.model_dump_json(include=_FIELDS) for event in unique) + "]"
    row = (await conn.execute(_RECORD, {"events": document})).one()
    reached = [
        Reached(
            user_id=item["user_id"],
            period=item["period"],
            period_start=date.fromisoformat(item["period_start"]),
            used=int(item["used"]),
            quota=int(item["quota"]),
            plan=item["plan"],
        )
        for item in (row.reached if isinstance(row.reached, list) else json.loads(row.reached))
    ]
    announced = await announce_crossings(conn, reached) if reached else 0
    inserted = int(row.inserted)
    return BatchResult(inserted, len(events) - inserted, announced)
