"""Usage settings (``PARLEY_*`` environment variables).

One class for every usage process (worker, beat, API, relay): each reads the fields it needs.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from parley_common.api import HttpServerSettings
from parley_common.messaging.batch import BatchWorkerSettings
from parley_common.settings import (
    DatabaseSettings,
    InternalAuthSettings,
    RedisSettings,
    load_settings,
)
from pydantic import Field


class Settings(
    BatchWorkerSettings, HttpServerSettings, DatabaseSettings, RedisSettings, InternalAuthSettings
):
    http_port: int = Field(8002, description="Listen port of parley-usage-api")

    # Ledger partitions (parley-usage-beat)
    usage_partition_interval: Literal["month", "day"] = Field(
        "month", description="Range of one ledger partition (UTC calendar month or day)"
    )
    usage_partitions_ahead: int = Field(
        3, ge=2, le=60, description="Future partitions kept ready (an alert fires below two)"
    )
    usage_retention_days: int = Field(
        400, ge=1, description="Partitions ending longer ago than this are detached (kept as plain tables)"
    )
    usage_ddl_lock_timeout_ms: int = Field(
        2000, ge=10, description="lock_timeout of partition DDL, so it never queues writers behind it"
    )
    usage_ddl_retries: int = Field(8, ge=0, description="Attempts of a partition DDL after a lock timeout")
    usage_maintenance_interval: float = Field(
        3600.0, gt=0, description="Seconds between partition maintenance runs"
    )

    # Quota counters in Redis (parley-usage-beat)
    usage_reconcile_interval: float = Field(
        300.0, gt=0, description="Seconds between full reconciliations of the Redis quota counters"
    )
    usage_seed_check_interval: float = Field(
        5.0, gt=0, description="Seconds between checks that Redis still holds its counters (seeded marker)"
    )

    # Provider drift (parley-usage-beat)
    usage_drift_interval: float = Field(900.0, gt=0, description="Seconds between drift measurements")
    usage_drift_lookback_days: int = Field(
        7, ge=1, le=62, description="Days compared with the provider's reported usage"
    )


@lru_cache
def get_settings() -> Settings:
    return load_settings(Settings)
