"""The usage pipeline end to end: chat's outbox → relay → RabbitMQ → usage worker → ledger (+ rollups).

Everything is a real process on loopback: ``parley-chat-relay`` publishes (pipelined publisher confirms)
and ``parley-usage-worker`` consumes (bounded batches, one transaction per batch, ``WORKERS`` consumer
processes). Three figures, over events spread over ``USERS`` users:

- publish alone: the relay is connected to an empty outbox; N rows are committed at once and the clock
  runs until the broker has confirmed every one (no consumer: the messages stay queued);
- consume alone: those N messages are queued; the worker starts and the clock runs from its first
  consumer's start until the ledger holds N rows;
- end to end, sustained: relay and worker running, ``N_E2E`` more events are committed to the outbox in
  transactions of ``INSERT_CHUNK`` (what many chat requests would write), as fast as one connection can,
  and the clock runs from the first insert until the ledger holds every one of them.

The producer uses COPY so that the bench measures the pipeline, not the cost of generating rows. The
ledger is then checked: one row per event id, token sums exact, rollups equal to the ledger. The CPU the
relay and the worker spent per event, and the machine's load, are recorded next to the rate: on a shared
machine the rate moves with the load, the CPU per event much less.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import psutil
from parley_common.db.engine import connect_args
from parley_common.events import TokensConsumedV1
from parley_common.testing.processes import ManagedProcess, venv_command
from sqlalchemy import Engine, create_engine, text

from bench.context import BenchContext

N = 20_000  # events of the publish-only and consume-only phases
N_E2E = (
    50_000  # events of the end-to-end phase (longer, so a burst of other work on the machine averages out)
)
USERS = 2_000
INSERT_CHUNK = 500
WORKERS = int(os.environ.get("BENCH_USAGE_WORKERS", "2"))  # consumer processes (PARLEY_WORKER_CONCURRENCY)

PENDING = "SELECT count(*) FROM chat.outbox WHERE published_at IS NULL"
LEDGER = "SELECT count(*) FROM usage.ledger"


def _event_rows(count: int, users: list[uuid.UUID], start: int) -> list[tuple[str, str, str]]:
    """(event_id, event_type, payload JSON) of ``count`` usage events, as chat would write them."""
    now = datetime.now(UTC)
    rows = []
    for i in range(start, start + count):
        event = TokensConsumedV1(
            source="chat",
            time=now,
            user_id=users[i % len(users)],
            request_id=f"bench-{i}",
            model="gpt-4o-mini" if i % 3 else "gpt-4o",
            provider="openai",
            prompt_tokens=10 + i % 7,
            completion_tokens=5 + i % 11,
            daily_token_quota=1_000_000,
            monthly_token_quota=10_000_000,
            plan="pro",
            traceparent=f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01",
        )
        rows.append((str(event.id), event.type, event.model_dump_json()))
    return rows


def _copy(engine: Engine, rows: list[tuple[str, str, str]]) -> None:
    """COPY ``rows`` into chat's outbox in one transaction."""
    raw = engine.raw_connection()
    try:
        driver: Any = raw.driver_connection
        with (
            driver.cursor() as cursor,
            cursor.copy("COPY chat.outbox (event_id, event_type, payload) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)
        driver.commit()
    finally:
        raw.close()


def _count(engine: Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


def _wait(engine: Engine, sql: str, target: int, timeout: float) -> float:
    """Poll until ``sql`` counts ``target``; returns the perf_counter time it did."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if _count(engine, sql) >= target:
            return time.perf_counter()
        time.sleep(0.02)
    raise TimeoutError(f"{sql!r} did not reach {target} within {timeout}s (at {_count(engine, sql)})")


def _cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


def _first_log_time(process: ManagedProcess, event: str) -> float:
    """The wall-clock time (epoch seconds) of the first ``event`` line."""
    record = process.wait_for_log(lambda r: r.get("event") == event, timeout=120)
    return datetime.fromisoformat(str(record["timestamp"])).timestamp()


def run(ctx: BenchContext) -> dict[str, Any]:
    from parley_usage.partitions import PartitionPolicy, maintain_sync

    for old_log in ctx.processes.log_dir.glob("*.log"):
        old_log.unlink()  # wait_for_log must not find a previous run's lines
    engine = create_engine(ctx.database_url, connect_args=connect_args("bench.usage"))
    users = [uuid.uuid4() for _ in range(USERS)]
    env = {
        "PARLEY_ENV": "test",
        "PARLEY_DATABASE_URL": ctx.database_url,
        "PARLEY_RABBITMQ_URL": ctx.amqp_url,
        "PARLEY_LOG_LEVEL": "INFO",
    }
    try:
        maintain_sync(ctx.database_url, PartitionPolicy())  # what parley-usage-beat does at start
        relay = ctx.processes.spawn("relay", [venv_command("parley-chat-relay")], env)
        relay.wait_for_log("relay.connected", timeout=120)

        # 1. Publish alone.
        rows = _event_rows(N, users, 0)
        _copy(engine, rows)
        started = time.perf_counter()
        publish_s = _wait(engine, f"SELECT {N} - ({PENDING})", N, 300) - started

        # 2. Consume alone.
        worker = ctx.processes.spawn(
            "usage-worker",
            [venv_command("parley-usage-worker")],
            {**env, "PARLEY_WORKER_CONCURRENCY": str(WORKERS)},
        )
        first_consumer = _first_log_time(worker, "consumer.ready")
        _wait(engine, LEDGER, N, 300)
        consume_s = time.time() - first_consumer
        worker.wait_for_log(r"ready\.$", timeout=120)

        # 3. End to end, sustained.
        rows = _event_rows(N_E2E, users, N)
        consumers = worker.children_pids()
        relay_before, worker_before = _cpu_seconds([relay.pid]), _cpu_seconds(consumers)
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        for start in range(0, N_E2E, INSERT_CHUNK):
            _copy(engine, rows[start : start + INSERT_CHUNK])
        insert_s = time.perf_counter() - started
        e2e_s = _wait(engine, LEDGER, N + N_E2E, 300) - started
        relay_cpu = _cpu_seconds([relay.pid]) - relay_before
        worker_cpu = _cpu_seconds(consumers) - worker_before

        with engine.connect() as conn:
            distinct, tokens = conn.execute(
                text(
                    "SELECT count(DISTINCT event_id), sum(prompt_tokens + completion_tokens) FROM usage.ledger"
                )
            ).one()
            rollup_tokens = conn.execute(
                text("SELECT sum(prompt_tokens + completion_tokens) FROM usage.daily_rollups")
            ).scalar_one()
            lag = conn.execute(
                text(
                    "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP "
                    "(ORDER BY extract(epoch FROM recorded_at - occurred_at)) FROM usage.ledger "
                    "WHERE request_id = ANY(:ids)"
                ),
                {"ids": [f"bench-{i}" for i in range(N, N + N_E2E)]},
            ).scalar_one()
        expected_tokens = sum(10 + i % 7 + 5 + i % 11 for i in range(N + N_E2E))
        dead = worker.json_lines()
        relay.stop()
        worker.stop()
    finally:
        engine.dispose()
    return {
        "summary": {
            "end_to_end_events_per_s": round(N_E2E / e2e_s),
            "publish_only_msgs_per_s": round(N / publish_s),
            "consume_only_events_per_s": round(N / consume_s),
            "worker_processes": WORKERS,
        },
        "end_to_end": {
            "events": N_E2E,
            "seconds": round(e2e_s, 2),
            "insert_seconds": round(insert_s, 2),
            "insert_chunk": INSERT_CHUNK,
            "lag_seconds_p50_p99": [round(x, 3) for x in (lag or [])],
            "cpu_us_per_event": {
                "relay": round(1e6 * relay_cpu / N_E2E),
                "worker": round(1e6 * worker_cpu / N_E2E),
            },
            "loadavg_1m_before_and_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "note": "outbox inserts, relay (1 process) and worker all running at once on this machine",
        },
        "publish_only": {"events": N, "seconds": round(publish_s, 2), "relay_processes": 1},
        "consume_only": {"events": N, "seconds": round(consume_s, 2), "worker_processes": WORKERS},
        "check": {
            "ledger_rows": distinct,
            "expected_rows": N + N_E2E,
            "tokens_exact": tokens == expected_tokens == rollup_tokens,
            "worker_errors": sum(1 for r in dead if r.get("level") == "error"),
        },
        "users": USERS,
        "batch": {"size": 500, "wait_ms": 20, "prefetch": 1000},
    }
