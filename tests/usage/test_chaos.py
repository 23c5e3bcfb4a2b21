"""Fault injection on the usage pipeline, judged by a Jepsen-style checker: for each event id, was it
committed to the outbox, confirmed by the broker, written to the ledger (once)? Lost, duplicated and
unexpected counts are printed in the run's "usage figures" section.

Faults: kill -9 of worker children and of the worker's main process; a private RabbitMQ node stopped
(stop_app) or killed in the middle of a burst while chat keeps answering; the worker's PostgreSQL
backends terminated every 2 s. Every fault hits only processes these tests started.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from parley_common.db.admin import drop_database
from parley_common.db.migrations import registered
from parley_common.events import TokensConsumedV1
from parley_common.messaging import topology
from parley_common.testing import resources
from parley_common.testing import services as test_services
from parley_common.testing.net import free_port
from parley_common.testing.processes import ProcessManager, venv_command
from parley_usage.partitions import PartitionPolicy, maintain_sync

from tests.support.db import execute
from tests.support.platform import PlatformConfig, start_fake_provider
from tests.usage.support import (
    History,
    PrivateRabbit,
    add_to_outbox,
    check,
    count_lines,
    internal_token,
    ledger_count,
    many_events,
    queue_depth,
    restart_worker,
    rows,
    scalar,
    start_relay,
    start_worker,
    wait_for_new_line,
    wait_until,
)

pytestmark = pytest.mark.chaos


@pytest.fixture(scope="module")
def chaos_db(parley_services: test_services.TestServices) -> Iterator[str]:
    """A database of this module's own: nothing but these tests' events flows through it."""
    url = resources.create_database(parley_services.database_url, resources.new_tag(), registered())
    maintain_sync(url, PartitionPolicy())
    yield url
    drop_database(url)


def produce(
    database_url: str, events: list[TokensConsumedV1], *, seconds: float, chunk: int = 250
) -> threading.Thread:
    """Commit ``events`` to chat's outbox at an even pace over ``seconds`` (a background thread)."""

    def run() -> None:
        started = time.monotonic()
        for i in range(0, len(events), chunk):
            add_to_outbox(database_url, events[i : i + chunk], chunk=chunk)
            ahead = started + seconds * (i + chunk) / len(events) - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)

    thread = threading.Thread(target=run, name="producer", daemon=True)
    thread.start()
    return thread


def at_moments(moments: list[float], actions: list[Callable[[], None]]) -> None:
    started = time.monotonic()
    for moment, action in zip(moments, actions, strict=True):
        time.sleep(max(0.0, started + moment - time.monotonic()))
        action()


def pending(database_url: str) -> int:
    return int(scalar(database_url, "SELECT count(*) FROM chat.outbox WHERE published_at IS NULL"))


class TestWorkerKilled:
    def test_kill9_of_children_then_of_the_main_process_loses_and_duplicates_nothing(
        self,
        processes: ProcessManager,
        platform_config: PlatformConfig,
        fresh_amqp_url: str,
        chaos_db: str,
        figures: list[str],
    ) -> None:
        env = {
            **platform_config.base_env(),
            "PARLEY_DATABASE_URL": chaos_db,
            "PARLEY_RABBITMQ_URL": fresh_amqp_url,
        }
        seed = random.randrange(10**6)
        rng = random.Random(seed)
        worker = start_worker(processes, env, concurrency=2)
        start_relay(processes, env)
        history = History()
        events = many_events(10_000, [uuid.uuid4() for _ in range(100)])
        history.add(events)
        producer = produce(chaos_db, events, seconds=8)

        killed: list[int] = []

        def kill_a_child() -> None:
            seen = count_lines(worker, "^consumer.ready$")
            pid = rng.choice(worker.children_pids())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            # The supervisor restarts it; wait so that the next kill finds two consumers again.
            wait_for_new_line(worker, "^consumer.ready$", seen, timeout=120)

        at_moments(sorted(rng.uniform(0.5, 7.0) for _ in range(3)), [kill_a_child] * 3)
        orphans = worker.children_pids()
        os.kill(worker.pid, signal.SIGKILL)  # the main process; its children must follow by themselves
        assert worker.popen is not None
        worker.popen.wait(10)
        wait_until(
            lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in orphans),
            timeout=30,
            what="the orphaned consumers to exit",
        )
        restart_worker(worker)
        producer.join(60)

        wait_until(
            lambda: ledger_count(chaos_db, list(history.committed)) >= 10_000, timeout=180, what="10,000 rows"
        )
        wait_until(
            lambda: queue_depth(fresh_amqp_url, topology.USAGE.name) == 0, timeout=30, what="queue drained"
        )
        verdict = check(chaos_db, history)
        restarts = count_lines(worker, "^worker.child_exited$")
        figures.append(
            verdict.describe(
                f"kill -9 of 3 children (seed {seed}, {restarts} restarts) then of the main process"
            )
        )
        assert verdict.exact, verdict
        assert len(killed) == 3
        assert queue_depth(fresh_amqp_url, topology.USAGE.dead_letter_queue) == 0


@pytest.fixture(scope="module")
def private_rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRabbit]:
    base: Path = tmp_path_factory.mktemp("rabbit")
    manager = ProcessManager(base / "logs")
    rabbit = PrivateRabbit(base / "node", manager)
    rabbit.start()
    try:
        yield rabbit
    finally:
        try:
            rabbit.ctl("stop", timeout=60)
        except (RuntimeError, OSError):
            pass
        manager.stop_all()


def start_chat(processes: ProcessManager, env: dict[str, str]) -> str:
    _, provider_url = start_fake_provider(processes)
    port = free_port()
    processes.spawn(
        "chat",
        [venv_command("parley-chat-api")],
        {
            **env,
            "PARLEY_HTTP_PORT": str(port),
            "PARLEY_OPENAI_BASE_URL": provider_url + "/v1",
            "PARLEY_OPENAI_API_KEY": "test-provider-key",
        },
        ready_url=f"http://127.0.0.1:{port}/readyz",
        timeout=120,
    )
    return f"http://127.0.0.1:{port}"


def ask_chat(chat_url: str, token: str, n: int) -> int:
    """``n`` completions; returns how many answered 200."""
    ok = 0
    with httpx.Client(base_url=chat_url, timeout=30) as client:
        for i in range(n):
            response = client.post(
                "/v1/chat/completions",
                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"hello {i}"}]},
                headers={"authorization": f"Bearer {token}"},
            )
            ok += response.status_code == 200
    return ok


def chat_events(database_url: str, user: uuid.UUID) -> list[TokensConsumedV1]:
    return [
        TokensConsumedV1.model_validate(r.payload)
        for r in rows(
            database_url,
            "SELECT payload FROM chat.outbox WHERE event_type = 'usage.tokens_consumed.v1' "
            "AND payload->>'user_id' = :u",
            u=str(user),
        )
    ]


def broker_outage(
    *,
    outage: Callable[[], None],
    back: Callable[[], None],
    title: str,
    processes: ProcessManager,
    platform_config: PlatformConfig,
    rabbit: PrivateRabbit,
    database_url: str,
    signing_key_pem: str,
    figures: list[str],
) -> None:
    env = {
        **platform_config.base_env(),
        "PARLEY_DATABASE_URL": database_url,
        "PARLEY_RABBITMQ_URL": rabbit.url,
    }
    chat_url = start_chat(processes, env)
    start_worker(processes, env, concurrency=2)
    relay = start_relay(processes, env)
    relay.wait_for_log("relay.connected", timeout=60)
    history = History()
    events = many_events(20_000, [uuid.uuid4() for _ in range(200)])
    history.add(events)
    chat_user = uuid.uuid4()
    token = internal_token(signing_key_pem, chat_user)

    producer = produce(database_url, events, seconds=12)
    time.sleep(5)  # the middle of the burst
    outage()
    down_at = time.monotonic()
    answered = ask_chat(chat_url, token, 10)  # chat keeps answering: its events wait in the outbox
    waiting = pending(database_url)
    time.sleep(max(0.0, down_at + 10 - time.monotonic()))  # the broker stays away 10 s in all
    back()
    back_at = time.monotonic()
    producer.join(60)
    wait_until(
        lambda: pending(database_url) == 0, timeout=60, interval=0.1, what="every outbox row published"
    )
    published_in = time.monotonic() - back_at
    history.add(chat_events(database_url, chat_user))

    wait_until(
        lambda: ledger_count(database_url, list(history.committed)) >= len(history.committed),
        timeout=180,
        what="every event in the ledger",
    )
    wait_until(lambda: rabbit.queue_depths().get(topology.USAGE.name) == 0, timeout=60, what="queue drained")
    verdict = check(database_url, history)
    figures.append(
        verdict.describe(title)
        + f"; chat answered {answered}/10 during the outage; {waiting} rows waited in the outbox;"
        f" all published {published_in:.1f} s after the broker's return"
    )
    assert answered == 10
    assert waiting > 0
    assert published_in <= 60
    assert verdict.exact, verdict
    assert verdict.committed == 20_010
    assert rabbit.queue_depths().get(topology.USAGE.dead_letter_queue, 0) == 0


class TestBrokerAway:
    def test_stop_app_for_10s_in_the_middle_of_20000_events(
        self,
        processes: ProcessManager,
        platform_config: PlatformConfig,
        private_rabbit: PrivateRabbit,
        chaos_db: str,
        signing_key_pem: str,
        figures: list[str],
    ) -> None:
        broker_outage(
            outage=private_rabbit.stop_app,
            back=private_rabbit.start_app,
            title="RabbitMQ stop_app for 10 s during 20,000 events",
            processes=processes,
            platform_config=platform_config,
            rabbit=private_rabbit,
            database_url=chaos_db,
            signing_key_pem=signing_key_pem,
            figures=figures,
        )

    def test_broker_process_killed_in_the_middle_of_20000_events(
        self,
        processes: ProcessManager,
        platform_config: PlatformConfig,
        private_rabbit: PrivateRabbit,
        chaos_db: str,
        signing_key_pem: str,
        figures: list[str],
    ) -> None:
        broker_outage(
            outage=private_rabbit.kill,
            back=private_rabbit.start,
            title="RabbitMQ killed (kill -9) and restarted during 20,000 events",
            processes=processes,
            platform_config=platform_config,
            rabbit=private_rabbit,
            database_url=chaos_db,
            signing_key_pem=signing_key_pem,
            figures=figures,
        )


class TestDatabaseBackendsTerminated:
    def test_worker_backends_terminated_every_2s(
        self,
        processes: ProcessManager,
        platform_config: PlatformConfig,
        fresh_amqp_url: str,
        chaos_db: str,
        figures: list[str],
    ) -> None:
        env = {
            **platform_config.base_env(),
            "PARLEY_DATABASE_URL": chaos_db,
            "PARLEY_RABBITMQ_URL": fresh_amqp_url,
        }
        worker = start_worker(processes, env, concurrency=2)
        start_relay(processes, env)
        history = History()
        events = many_events(8_000, [uuid.uuid4() for _ in range(100)])
        history.add(events)
        terminated: list[int] = []
        in_transaction: list[int] = []
        done = threading.Event()
        # Only this worker's sessions on this test's database (application_name + datname).
        mine = "application_name = 'usage.worker' AND datname = current_database()"

        def terminate_every_2s() -> None:
            while not done.wait(2.0):
                # Prefer a backend in the middle of a batch's transaction (wait up to 1 s for one),
                # so the kill hits a write, not an idle pooled connection.
                busy = 0
                deadline = time.monotonic() + 1.0
                while not busy and time.monotonic() < deadline:
                    busy = execute(
                        chaos_db,
                        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {mine} AND state <> 'idle'",
                    )
                in_transaction.append(busy)
                terminated.append(
                    busy
                    + execute(
                        chaos_db, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {mine}"
                    )
                )

        killer = threading.Thread(target=terminate_every_2s, daemon=True)
        killer.start()
        producer = produce(chaos_db, events, seconds=10)
        try:
            producer.join(60)
            wait_until(
                lambda: ledger_count(chaos_db, list(history.committed)) >= 8_000,
                timeout=180,
                what="8,000 rows",
            )
        finally:
            done.set()
            killer.join(10)
        wait_until(lambda: queue_depth(fresh_amqp_url, topology.USAGE.name) == 0, timeout=30)
        verdict = check(chaos_db, history)
        retries = count_lines(worker, "^batch.retrying$")
        figures.append(
            verdict.describe(
                f"worker backends terminated every 2 s ({sum(terminated)} backends in {len(terminated)} rounds,"
                f" {sum(in_transaction)} of them mid-transaction, {retries} batch retries)"
            )
        )
        assert verdict.exact, verdict
        assert len(terminated) >= 3
        assert sum(in_transaction) >= 1
        assert retries >= 1
        assert queue_depth(fresh_amqp_url, topology.USAGE.dead_letter_queue) == 0
