"""Messages a worker cannot handle end in the dead-letter queue and hold nothing else up."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import replace

import aio_pika
from parley_common.events import TokensConsumedV1
from parley_common.messaging import topology
from parley_common.messaging.celery_protocol import build_task_message, event_message
from parley_common.testing import rabbitmq
from parley_common.testing.processes import ManagedProcess, ProcessManager, venv_command

from tests.support.api import eventually
from tests.support.db import ledger_rows


def publish_event(url: str, event: TokensConsumedV1) -> None:
    rabbitmq.publish(url, [event_message(event)])


def dead_letters(url: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    return asyncio.run(rabbitmq.drain(url, topology.USAGE.dead_letter_queue))


def death_reason(message: aio_pika.abc.AbstractIncomingMessage) -> str:
    deaths = message.headers.get("x-death") or []
    return str(deaths[0].get("reason")) if deaths else ""


def start_worker(processes: ProcessManager, amqp_url: str, database_url: str, **env: str) -> ManagedProcess:
    worker = processes.spawn(
        "usage-worker",
        [venv_command("parley-usage-worker")],
        {"PARLEY_DATABASE_URL": database_url, "PARLEY_RABBITMQ_URL": amqp_url, "PARLEY_ENV": "test", **env},
    )
    worker.wait_for_log(r"ready\.$")
    return worker


def valid_event(user: uuid.UUID) -> TokensConsumedV1:
    return TokensConsumedV1(
        source="test",
        user_id=user,
        request_id="ok",
        model="m",
        provider="p",
        prompt_tokens=3,
        completion_tokens=4,
    )


class TestDeadLetters:
    def test_malformed_messages_are_dead_lettered_and_the_next_event_still_lands(
        self, processes: ProcessManager, fresh_amqp_url: str, database_url: str
    ) -> None:
        start_worker(processes, fresh_amqp_url, database_url)
        invalid_id, garbage_id = str(uuid.uuid4()), str(uuid.uuid4())
        # A well-formed Celery message whose event fails validation (negative tokens, no user).
        invalid = build_task_message(
            "usage.tokens_consumed.v1",
            invalid_id,
            {
                "event": {
                    "id": invalid_id,
                    "type": "usage.tokens_consumed.v1",
                    "source": "test",
                    "prompt_tokens": -1,
                }
            },
        )
        rabbitmq.publish(fresh_amqp_url, [invalid])
        # A body that is not JSON at all.
        garbage = build_task_message("usage.tokens_consumed.v1", garbage_id, {})
        rabbitmq.publish(fresh_amqp_url, [replace(garbage, body=b"\x00not json{")])
        user = uuid.uuid4()
        publish_event(fresh_amqp_url, valid_event(user))

        rows = eventually(lambda: ledger_rows(database_url, str(user)), what="the valid event's ledger row")
        assert [(r["prompt_tokens"], r["completion_tokens"]) for r in rows] == [(3, 4)]
        dead: list[aio_pika.abc.AbstractIncomingMessage] = []
        eventually(
            lambda: dead.extend(dead_letters(fresh_amqp_url)) or len(dead) >= 2, what="two dead letters"
        )
        assert sorted(m.headers["id"] for m in dead) == sorted([invalid_id, garbage_id])
        assert {death_reason(m) for m in dead} == {"rejected"}
        assert asyncio.run(rabbitmq.queue_depth(fresh_amqp_url, topology.USAGE.name)) == 0

    def test_an_event_that_keeps_failing_is_dead_lettered_after_the_delivery_limit(
        self, processes: ProcessManager, fresh_amqp_url: str, database_url: str
    ) -> None:
        # A database that does not exist: every attempt fails with a transient (connection) error, so the
        # worker returns the message to the queue until RabbitMQ's delivery limit dead-letters it.
        missing_db = database_url.rsplit("/", 1)[0] + "/parley_no_such_database"
        worker = start_worker(processes, fresh_amqp_url, missing_db, PARLEY_TRANSIENT_RETRIES="0")
        event = valid_event(uuid.uuid4())
        publish_event(fresh_amqp_url, event)

        dead: list[aio_pika.abc.AbstractIncomingMessage] = []
        eventually(
            lambda: dead.extend(dead_letters(fresh_amqp_url)) or dead, timeout=60, what="a dead letter"
        )
        assert [m.headers["id"] for m in dead] == [str(event.id)]
        assert death_reason(dead[0]) == "delivery_limit"
        body = json.loads(dead[0].body)
        assert body[1]["event"]["id"] == str(event.id)  # the payload survives intact for a replay
        attempts = [r for r in worker.json_lines() if r.get("event") == "event.transient_failure_requeued"]
        assert len(attempts) == topology.USAGE.delivery_limit + 1  # first delivery + `limit` redeliveries
