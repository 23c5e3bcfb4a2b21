"""Provider-reported usage against the ledger, per UTC day: the reconciliation hook.

"Provider-reported" means the provider's own per-day usage export: OpenAI's organization Usage API
(``GET /v1/organization/usage/completions?bucket_width=1d&group_by=model``) saved as JSON, or any
provider's export as CSV (``day,provider,model,prompt_tokens,completion_tokens[,requests]``). An operator
or a scheduled job loads it with ``parley-usage-import-provider-usage`` into ``usage.provider_usage``
(one row per day, provider and model; a re-import of a day replaces it).

parley-usage-beat then compares, for each day of the look-back window that has a report, the provider's
tokens with the ledger's tokens for that provider (from the daily rollups; cached answers are recorded
under provider ``cache`` and never reach the provider) and exposes the difference as
``parley_usage_provider_drift_tokens{provider,day}`` and ``..._ratio``. A positive drift means the
provider bills for more than Parley metered (lost or under-estimated events); a negative one, the reverse.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, NonNegativeInt, ValidationError
from sqlalchemy import Connection, Engine, text

from parley_usage.metrics import PROVIDER_DRIFT_RATIO, PROVIDER_DRIFT_TOKENS


class ProviderUsageRow(BaseModel):
    """One day of one model as the provider reports it."""

    day: date
    provider: str = Field(min_length=1, max_length=100)
    model: str = Field(min_length=1, max_length=200)
    prompt_tokens: NonNegativeInt
    completion_tokens: NonNegativeInt
    requests: NonNegativeInt | None = None


@dataclass(frozen=True)
class DayDrift:
    day: date
    provider: str
    provider_tokens: int
    ledger_tokens: int

    @property
    def drift_tokens(self) -> int:
        return self.provider_tokens - self.ledger_tokens

    @property
    def drift_ratio(self) -> float | None:
        return self.drift_tokens / self.ledger_tokens if self.ledger_tokens else None


_DRIFT = text(
    """
    WITH reported AS (
        SELECT day, provider, sum(prompt_tokens + completion_tokens) AS tokens
        FROM usage.provider_usage WHERE day >= :start AND day <= :end GROUP BY 1, 2
    ), metered AS (
        SELECT day, provider, sum(prompt_tokens + completion_tokens) AS tokens
        FROM usage.daily_rollups WHERE day >= :start AND day <= :end GROUP BY 1, 2
    )
    SELECT r.day, r.provider, r.tokens AS provider_tokens, coalesce(m.tokens, 0) AS ledger_tokens
    FROM reported r LEFT JOIN metered m USING (day, provider)
    ORDER BY r.day, r.provider
    """
)


def drift(conn: Connection, start: date, end: date) -> list[DayDrift]:
    """Drift of every day in [start, end] that has a provider report."""
    return [
        DayDrift(row.day, row.provider, int(row.provider_tokens), int(row.ledger_tokens))
        for row in conn.execute(_DRIFT, {"start": start, "end": end})
    ]


def measure_drift(engine: Engine, lookback_days: int, *, today: date | None = None) -> list[DayDrift]:
    """Recompute the drift gauges for the look-back window (days without a report have no series)."""
    today = today or datetime.now(UTC).date()
    with engine.connect() as conn:
        days = drift(conn, today - timedelta(days=lookback_days), today)
    PROVIDER_DRIFT_TOKENS.clear()
    PROVIDER_DRIFT_RATIO.clear()
    for item in days:
        labels = (item.provider, item.day.isoformat())
        PROVIDER_DRIFT_TOKENS.labels(*labels).set(item.drift_tokens)
        if item.drift_ratio is not None:
            PROVIDER_DRIFT_RATIO.labels(*labels).set(item.drift_ratio)
    return days


def import_rows(conn: Connection, rows: Iterable[ProviderUsageRow], source: str) -> int:
    """Upsert provider-reported rows (a day, provider and model seen again is replaced)."""
    items = list(rows)
    if items:
        conn.execute(
            text(
                """
                INSERT INTO usage.provider_usage (day, provider, model, prompt_tokens, completion_tokens,
                                                  requests, source)
                VALUES (:day, :provider, :model, :prompt_tokens, :completion_tokens, :requests, :source)
                ON CONFLICT (day, provider, model) DO UPDATE SET
                    prompt_tokens = excluded.prompt_tokens, completion_tokens = excluded.completion_tokens,
                    requests = excluded.requests, source = excluded.source, imported_at = now()
                """
            ),
            [{**item.model_dump(), "source": source} for item in items],
        )
    return len(items)


def parse_csv(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    for record in csv.DictReader(lines):
        yield {
            key.strip(): (value.strip() if value is not None else None) or None
            for key, value in record.items()
        }


def parse_openai_usage(document: dict[str, Any], provider: str) -> Iterator[dict[str, Any]]:
    """Rows of an OpenAI organization Usage API page (completions, 1-day buckets, grouped by model)."""
    for bucket in document.get("data", []):
        day = datetime.fromtimestamp(int(bucket["start_time"]), UTC).date()
        for result in bucket.get("results", []):
            yield {
                "day": day,
                "provider": provider,
                "model": result.get("model") or "unknown",
                "prompt_tokens": int(result.get("input_tokens", 0)),
                "completion_tokens": int(result.get("output_tokens", 0)),
                "requests": result.get("num_model_requests"),
            }


def _merge(records: Iterable[dict[str, Any]]) -> list[ProviderUsageRow]:
    """Validate records and add up repeated (day, provider, model) keys (pages of one export)."""
    merged: dict[tuple[date, str, str], ProviderUsageRow] = {}
    for number, record in enumerate(records, start=1):
        try:
            row = ProviderUsageRow.model_validate(record)
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            raise ValueError(f"record {number}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
        key = (row.day, row.provider, row.model)
        seen = merged.get(key)
        if seen is not None:
            row = row.model_copy(
                update={
                    "prompt_tokens": seen.prompt_tokens + row.prompt_tokens,
                    "completion_tokens": seen.completion_tokens + row.completion_tokens,
                    "requests": (seen.requests or 0) + (row.requests or 0)
                    if seen.requests is not None or row.requests is not None
                    else None,
                }
            )
        merged[key] = row
    return list(merged.values())


def import_main(argv: list[str] | None = None) -> None:
    """``parley-usage-import-provider-usage``: load a provider's usage export (all of it or nothing)."""
    parser = argparse.ArgumentParser(
        prog="parley-usage-import-provider-usage",
        description="Load a model provider's per-day usage export into usage.provider_usage.",
    )
    parser.add_argument("file", type=Path, help="the export: CSV, or an OpenAI Usage API JSON page")
    parser.add_argument("--format", choices=("csv", "openai-usage"), default="csv")
    parser.add_argument("--provider", default="openai", help="provider name for openai-usage exports")
    parser.add_argument("--source", default=None, help="where the export came from (default: the file name)")
    args = parser.parse_args(argv)

    from parley_common.db.engine import create_sync_db_engine
    from parley_common.process import init_process

    from parley_usage.config import get_settings

    settings = get_settings()
    init_process("usage", "import", settings)
    try:
        content = args.file.read_text(encoding="utf-8")
        records = (
            parse_csv(content.splitlines())
            if args.format == "csv"
            else parse_openai_usage(json.loads(content), args.provider)
        )
        rows = _merge(records)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201 - a command-line tool's answer
        raise SystemExit(1) from None
    engine = create_sync_db_engine(settings.database_url, application_name="usage.import", pool_size=1)
    try:
        with engine.begin() as conn:
            count = import_rows(conn, rows, args.source or args.file.name)
    finally:
        engine.dispose()
    print(f"imported {count} provider usage rows")  # noqa: T201 - a command-line tool's answer
