"""parley-usage-worker as a real process: from chat's outbox to the ledger, dead letters, metrics,
graceful stop."""

from __future__ import annotations

import uuid

from parley_common.messaging import topology
from parley_common.messaging.celery_protocol import build_task_message, event_message
from parley_common.testing.net import free_port
from parley_common.testing.processes import ProcessManager

from tests.support.db import execute
from tests.support.metrics import metric
from tests.usage.support import (
    History,
    add_to_outbox,
    check,
    count_lines,
    death_reason,
    drain_queue,
    ledger_count,
    many_events,
    publish,
    queue_depth,
    start_relay,
    start_worker,
    usage_event,
    wait_until,
)


class TestFromOutboxToLedger:
    def test_every_event_lands_once_even_when_published_twice_and_metrics_count_them(
        self, processes: ProcessManager, usage_env: dict[str, str], ledger_partitions: str, figures: list[str]
    ) -> None:
        port = free_port()
        worker = start_worker(processes, usage_env, PARLEY_METRICS_PORT=str(port))
        relay = start_relay(processes, usage_env)
        users = [uuid.uuid4() for _ in range(7)]
        events = many_events(300, users)
        history = History()
        history.add(events)
        add_to_outbox(ledger_partitions, events)
        wait_until(
            lambda: ledger_count(ledger_partitions, list(history.committed)) == 300,
            timeout=60,
            what="300 rows",
        )

        # A relay that died after the broker's confirm and before its commit publishes again.
        republished = [e.id for e in events[:40]]
        assert (
            execute(
                ledger_partitions,
                "UPDATE chat.outbox SET published_at = NULL WHERE event_id = ANY(:ids)",
                ids=republished,
            )
            == 40
        )
        wait_until(
            lambda: count_lines(worker, "^ledger.duplicate_ignored$") > 0, timeout=60, what="duplicates seen"
        )
        wait_until(
            lambda: queue_depth(usage_env["PARLEY_RABBITMQ_URL"], topology.USAGE.name) == 0, timeout=30
        )
        verdict = check(ledger_partitions, history)
        figures.append(verdict.describe("republished 40 of 300"))
        assert verdict.exact, verdict

        metrics = f"http://127.0.0.1:{port}/metrics"
        assert metric(metrics, "parley_usage_ledger_rows_total") == 300
        assert metric(metrics, "parley_usage_ledger_duplicates_total") == 40
        assert metric(metrics, "parley_events_handled_total", outcome="ok") == 340
        assert metric(metrics, "parley_batch_size_events_count") >= 2
        assert relay.alive()


class TestDeadLetters:
    def test_an_event_the_database_refuses_is_dead_lettered_after_the_delivery_limit_and_holds_nothing_up(
        self, processes: ProcessManager, usage_env: dict[str, str], ledger_partitions: str
    ) -> None:
        url = usage_env["PARLEY_RABBITMQ_URL"]
        worker = start_worker(processes, usage_env, concurrency=1)
        user = uuid.uuid4()
        good = [usage_event(user, n) for n in range(200)]
        poison = usage_event(user, 999, model="m" * 300)  # a valid event; the column holds 200 characters
        publish(
            url,
            [event_message(e) for e in good[:100]]
            + [event_message(poison)]
            + [event_message(e) for e in good[100:]],
        )

        wait_until(
            lambda: ledger_count(ledger_partitions, [e.id for e in good]) == 200, timeout=60, what="good rows"
        )
        dead = wait_until(
            lambda: drain_queue(url, topology.USAGE.dead_letter_queue), timeout=60, what="a dead letter"
        )
        assert [m.headers["id"] for m in dead] == [str(poison.id)]
        assert death_reason(dead[0]) == "delivery_limit"
        assert ledger_count(ledger_partitions, [poison.id]) == 0
        refusals = count_lines(worker, "^event.refused_requeued$")
        assert refusals == topology.USAGE.delivery_limit + 1  # the first delivery and every redelivery
        assert queue_depth(url, topology.USAGE.name) == 0

    def test_undecodable_and_invalid_messages_are_dead_lettered_at_once(
        self, processes: ProcessManager, usage_env: dict[str, str], ledger_partitions: str
    ) -> None:
        url = usage_env["PARLEY_RABBITMQ_URL"]
        start_worker(processes, usage_env, concurrency=1)
        invalid_id, garbage_id = str(uuid.uuid4()), str(uuid.uuid4())
        invalid = build_task_message(
            "usage.tokens_consumed.v1",
            invalid_id,
            {
                "event": {
                    "id": invalid_id,
                    "type": "usage.tokens_consumed.v1",
                    "source": "t",
                    "prompt_tokens": -1,
                }
            },
        )
        garbage = build_task_message("usage.tokens_consumed.v1", garbage_id, {})
        garbage = type(garbage)(**{**garbage.__dict__, "body": b"\x00not json{"})
        valid = usage_event(uuid.uuid4(), 1)
        publish(url, [invalid, garbage, event_message(valid)])

        wait_until(lambda: ledger_count(ledger_partitions, [valid.id]) == 1, timeout=60, what="the valid row")
        dead: list = []  # type: ignore[type-arg]
        wait_until(
            lambda: dead.extend(drain_queue(url, topology.USAGE.dead_letter_queue)) or len(dead) >= 2,
            timeout=30,
        )
        assert sorted(m.headers["id"] for m in dead) == sorted([invalid_id, garbage_id])
        assert {death_reason(m) for m in dead} == {"rejected"}

    def test_database_errors_are_retried_then_dead_lettered_never_acknowledged_away(
        self, processes: ProcessManager, usage_env: dict[str, str], ledger_partitions: str
    ) -> None:
        url = usage_env["PARLEY_RABBITMQ_URL"]
        missing = ledger_partitions.rsplit("/", 1)[0] + "/parley_no_such_database"
        worker = start_worker(
            processes,
            {**usage_env, "PARLEY_DATABASE_URL": missing},
            concurrency=1,
            PARLEY_TRANSIENT_RETRIES="1",
        )
        event = usage_event(uuid.uuid4(), 1)
        publish(url, [event_message(event)])
        dead = wait_until(
            lambda: drain_queue(url, topology.USAGE.dead_letter_queue), timeout=90, what="a dead letter"
        )
        assert [m.headers["id"] for m in dead] == [str(event.id)]
        assert death_reason(dead[0]) == "delivery_limit"
        assert count_lines(worker, "^batch.retrying$") >= topology.USAGE.delivery_limit + 1
        assert count_lines(worker, "^event.transient_failure_requeued$") == topology.USAGE.delivery_limit + 1


class TestStopping:
    def test_sigterm_writes_and_acknowledges_what_was_received_before_exiting(
        self, processes: ProcessManager, usage_env: dict[str, str], ledger_partitions: str
    ) -> None:
        url = usage_env["PARLEY_RABBITMQ_URL"]
        # A batch waits up to 30 s for more events: only the stop can make it write these.
        worker = start_worker(processes, usage_env, concurrency=1, PARLEY_WORKER_BATCH_WAIT_MS="30000")
        events = many_events(25, [uuid.uuid4()])
        publish(url, [event_message(e) for e in events])
        wait_until(lambda: queue_depth(url, topology.USAGE.name) == 0, timeout=30, what="all delivered")
        assert ledger_count(ledger_partitions, [e.id for e in events]) == 0
        worker.stop(timeout=30)
        assert worker.popen is not None
        assert worker.popen.returncode == 0
        assert ledger_count(ledger_partitions, [e.id for e in events]) == 25
        assert queue_depth(url, topology.USAGE.name) == 0
