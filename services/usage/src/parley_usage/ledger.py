"""Writing the ledger: one row per usage event, whatever the number of deliveries."""

from __future__ import annotations

from parley_common.events import TokensConsumedV1
from sqlalchemy import Engine
from sqlalchemy.dialects.postgresql import insert

from parley_usage.models import LedgerEntry


def record_usage(engine: Engine, event: TokensConsumedV1) -> bool:
    """Insert the event's ledger row; False when it was already there (a redelivery)."""
    statement = (
        insert(LedgerEntry)
        .values(
            event_id=event.id,
            user_id=event.user_id,
            request_id=event.request_id,
            model=event.model,
            provider=event.provider,
            status=event.status,
            prompt_tokens=event.prompt_tokens,
            completion_tokens=event.completion_tokens,
            cached=event.cached,
            estimated=event.estimated,
            occurred_at=event.time,
        )
        .on_conflict_do_nothing(index_elements=["event_id"])
    )
    with engine.begin() as conn:
        return conn.execute(statement).rowcount == 1
