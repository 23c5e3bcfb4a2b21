"""Usage's Prometheus metrics (``parley_usage_*``).

Counters are written by the worker's children (multiprocess mode); gauges by parley-usage-beat, a single
process, which computes them on its schedule.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

LEDGER_ROWS = Counter("parley_usage_ledger_rows_total", "Ledger rows written (one per model call)")
LEDGER_DUPLICATES = Counter(
    "parley_usage_ledger_duplicates_total", "Deliveries of an event the ledger already held (ignored)"
)
THRESHOLDS_ANNOUNCED = Counter(
    "parley_usage_quota_thresholds_announced_total",
    "quota.threshold_crossed.v1 events written to the outbox",
    ["period", "threshold"],
)

FUTURE_PARTITIONS = Gauge(
    "parley_usage_ledger_future_partitions",
    "Ledger partitions ready for periods after the current one (alert below 2)",
)
PARTITION_SHORTFALL = Gauge(
    "parley_usage_ledger_partition_shortfall",
    "1 while fewer than two future ledger partitions exist (maintenance is failing), else 0",
)
DEFAULT_PARTITION_ROWS = Gauge(
    "parley_usage_ledger_default_partition_rows",
    "Ledger rows waiting in the default partition (periods with no partition of their own)",
)
PARTITIONS_DETACHED = Counter(
    "parley_usage_ledger_partitions_detached_total", "Ledger partitions detached after the retention period"
)
PARTITIONS_CREATED = Counter("parley_usage_ledger_partitions_created_total", "Ledger partitions created")
DDL_LOCK_TIMEOUTS = Counter(
    "parley_usage_ddl_lock_timeouts_total", "Partition DDL attempts that hit lock_timeout (then retried)"
)
MAINTENANCE_FAILURES = Counter(
    "parley_usage_maintenance_failures_total", "Scheduled usage jobs that failed", ["job"]
)
MAINTENANCE_LAST_SUCCESS = Gauge(
    "parley_usage_maintenance_last_success_timestamp_seconds", "When a scheduled job last succeeded", ["job"]
)

QUOTA_COUNTERS_RAISED = Counter(
    "parley_usage_quota_counters_raised_total", "Redis quota counters raised to the ledger's total"
)
QUOTA_RESEEDS = Counter(
    "parley_usage_quota_reseeds_total",
    "Full re-seeds of Redis quota counters after the seeded marker vanished",
)
QUOTA_SEEDED = Gauge(
    "parley_usage_quota_seeded", "1 when Redis holds reconciled quota counters (the seeded marker), else 0"
)

PROVIDER_DRIFT_TOKENS = Gauge(
    "parley_usage_provider_drift_tokens",
    "Provider-reported tokens minus ledger tokens for one provider and UTC day (positive: provider bills more)",
    ["provider", "day"],
)
PROVIDER_DRIFT_RATIO = Gauge(
    "parley_usage_provider_drift_ratio",
    "(provider-reported - ledger) / ledger tokens for one provider and UTC day",
    ["provider", "day"],
)
