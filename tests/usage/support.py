"""Helpers of the usage tests: events into chat's outbox, the usage processes, a Jepsen-style checker,
and private RabbitMQ and Redis servers that a test may break without disturbing anyone else."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from parley_common.auth.internal import InternalIdentity, mint_internal_token
from parley_common.auth.keys import load_signing_keys
from parley_common.db.engine import connect_args
from parley_common.events import TokensConsumedV1
from parley_common.testing.net import free_port, tcp_open
from parley_common.testing.processes import ManagedProcess, ProcessManager, venv_command
from sqlalchemy import create_engine, text

# ---------------------------------------------------------------------------------------------------
# Events


def usage_event(
    user_id: uuid.UUID,
    n: int = 0,
    *,
    prompt: int | None = None,
    completion: int | None = None,
    at: datetime | None = None,
    **fields: Any,
) -> TokensConsumedV1:
    return TokensConsumedV1(
        source="test",
        time=at or datetime.now(UTC),
        user_id=user_id,
        request_id=f"req-{n}",
        model=fields.pop("model", "gpt-4o-mini"),
        provider=fields.pop("provider", "openai"),
        prompt_tokens=10 + n % 7 if prompt is None else prompt,
        completion_tokens=5 + n % 11 if completion is None else completion,
        **fields,
    )


def many_events(count: int, users: Sequence[uuid.UUID], *, offset: int = 0) -> list[TokensConsumedV1]:
    return [usage_event(users[i % len(users)], i) for i in range(offset, offset + count)]


def add_to_outbox(database_url: str, events: Iterable[TokensConsumedV1], *, chunk: int = 500) -> None:
    """Commit ``events`` to chat's outbox (as chat does), ``chunk`` rows per transaction, with COPY."""
    engine = create_engine(database_url, connect_args=connect_args("tests.outbox"))
    try:
        raw = engine.raw_connection()
        try:
            driver: Any = raw.driver_connection
            batch: list[TokensConsumedV1] = []
            for event in [*events, None]:
                if event is not None:
                    batch.append(event)
                if batch and (event is None or len(batch) >= chunk):
                    with (
                        driver.cursor() as cur,
                        cur.copy("COPY chat.outbox (event_id, event_type, payload) FROM STDIN") as copy,
                    ):
                        for item in batch:
                            copy.write_row((str(item.id), item.type, item.model_dump_json()))
                    driver.commit()
                    batch = []
        finally:
            raw.close()
    finally:
        engine.dispose()


def scalar(database_url: str, sql: str, **params: Any) -> Any:
    engine = create_engine(database_url, connect_args=connect_args("tests"))
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()
    finally:
        engine.dispose()


def rows(database_url: str, sql: str, **params: Any) -> list[Any]:
    engine = create_engine(database_url, connect_args=connect_args("tests"))
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql), params).all())
    finally:
        engine.dispose()


def ledger_count(database_url: str, ids: Sequence[uuid.UUID]) -> int:
    return int(
        scalar(database_url, "SELECT count(*) FROM usage.ledger WHERE event_id = ANY(:ids)", ids=list(ids))
    )


def wait_until(
    check: Callable[[], Any], *, timeout: float, interval: float = 0.2, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")


# ---------------------------------------------------------------------------------------------------
# Processes


def count_lines(process: ManagedProcess, pattern: str) -> int:
    regex = re.compile(pattern)
    return sum(1 for r in process.json_lines() if regex.search(str(r.get("event", ""))))


def wait_for_new_line(process: ManagedProcess, pattern: str, seen: int, timeout: float = 120) -> None:
    """Wait for a line matching ``pattern`` beyond the ``seen`` ones already in the log."""
    wait_until(
        lambda: count_lines(process, pattern) > seen, timeout=timeout, what=f"{process.name}: {pattern}"
    )


def start_worker(
    processes: ProcessManager,
    env: dict[str, str],
    *,
    name: str = "usage-worker",
    concurrency: int = 2,
    **extra: str,
) -> ManagedProcess:
    worker = processes.spawn(
        name,
        [venv_command("parley-usage-worker")],
        {**env, "PARLEY_WORKER_CONCURRENCY": str(concurrency), **extra},
    )
    worker.wait_for_log(r"ready\.$", timeout=120)
    return worker


def restart_worker(worker: ManagedProcess) -> None:
    """Start ``worker`` again (after it died) and wait until every consumer runs."""
    seen = count_lines(worker, r"ready\.$")
    worker.start()
    wait_for_new_line(worker, r"ready\.$", seen)


def start_relay(
    processes: ProcessManager, env: dict[str, str], *, name: str = "chat-relay"
) -> ManagedProcess:
    relay = processes.spawn(name, [venv_command("parley-chat-relay")], env)
    relay.wait_for_log("relay.started", timeout=120)
    return relay


def internal_token(signing_key_pem: str, user_id: uuid.UUID, role: str = "user", **plan: Any) -> str:
    key = load_signing_keys(signing_key_pem)[0]
    identity = InternalIdentity(user_id=user_id, role=role, plan=plan or {})  # type: ignore[arg-type]
    return mint_internal_token(key, identity)


# ---------------------------------------------------------------------------------------------------
# The Jepsen-style checker


@dataclass
class History:
    """What a test did: each event committed to the outbox, with its tokens, and the users it used."""

    committed: dict[uuid.UUID, int] = field(default_factory=dict)
    users: set[uuid.UUID] = field(default_factory=set)

    def add(self, events: Iterable[TokensConsumedV1]) -> None:
        for event in events:
            self.committed[event.id] = event.prompt_tokens + event.completion_tokens
            self.users.add(event.user_id)


@dataclass(frozen=True)
class Verdict:
    committed: int
    confirmed: int
    in_ledger: int
    lost: int
    duplicated: int
    unexpected: int
    expected_tokens: int
    ledger_tokens: int
    rollup_tokens: int

    @property
    def exact(self) -> bool:
        return (
            self.lost == 0
            and self.duplicated == 0
            and self.unexpected == 0
            and self.confirmed == self.committed
            and self.expected_tokens == self.ledger_tokens == self.rollup_tokens
        )

    def describe(self, title: str) -> str:
        return (
            f"{title}: committed={self.committed} confirmed_by_broker={self.confirmed} "
            f"in_ledger={self.in_ledger} lost={self.lost} duplicated={self.duplicated} "
            f"unexpected={self.unexpected} tokens expected={self.expected_tokens} "
            f"ledger={self.ledger_tokens} rollups={self.rollup_tokens}"
        )


def check(database_url: str, history: History) -> Verdict:
    """For each event id: committed to the outbox, confirmed by the broker (the relay marks a row
    published only after the confirm), and written to the ledger (how many times)."""
    ids = list(history.committed)
    users = list(history.users)
    confirmed = scalar(
        database_url,
        "SELECT count(*) FROM chat.outbox WHERE event_id = ANY(:ids) AND published_at IS NOT NULL",
        ids=ids,
    )
    per_id = rows(
        database_url,
        "SELECT event_id, count(*) AS n, sum(prompt_tokens + completion_tokens) AS tokens "
        "FROM usage.ledger WHERE event_id = ANY(:ids) GROUP BY event_id",
        ids=ids,
    )
    unexpected = scalar(
        database_url,
        "SELECT count(*) FROM usage.ledger WHERE user_id = ANY(:users) AND NOT (event_id = ANY(:ids))",
        users=users,
        ids=ids,
    )
    rollup_tokens = scalar(
        database_url,
        "SELECT coalesce(sum(prompt_tokens + completion_tokens), 0) FROM usage.daily_rollups "
        "WHERE user_id = ANY(:users)",
        users=users,
    )
    return Verdict(
        committed=len(ids),
        confirmed=int(confirmed),
        in_ledger=len(per_id),
        lost=len(ids) - len(per_id),
        duplicated=sum(int(r.n) - 1 for r in per_id),
        unexpected=int(unexpected),
        expected_tokens=sum(history.committed.values()),
        ledger_tokens=sum(int(r.tokens) for r in per_id),
        rollup_tokens=int(rollup_tokens),
    )


# ---------------------------------------------------------------------------------------------------
# Private servers


class PrivateRabbit:
    """A RabbitMQ node of the test's own (nodename, ports, mnesia and log directories, no plugins),
    started as a child process and stopped or killed by PID; the shared broker is never touched."""

    SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
    CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"

    def __init__(self, base: Path, processes: ProcessManager) -> None:
        if not Path(self.SERVER).exists():
            raise RuntimeError("rabbitmq-server is not installed (make services-up installs it)")
        self.base = base
        self.processes = processes
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"parley{os.getpid()}{secrets.token_hex(3)}@localhost"
        self.process: ManagedProcess | None = None
        (base / "mnesia").mkdir(parents=True, exist_ok=True)
        (base / "log").mkdir(exist_ok=True)
        (base / "enabled_plugins").write_text("[].\n")
        (base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )
        cookie = base / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o400)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def env(self) -> dict[str, str]:
        return {
            "HOME": str(self.base),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "no-env-file.conf"),
        }

    def ctl(self, *args: str, timeout: float = 120) -> str:
        result = subprocess.run(
            [self.CTL, "-q", "-n", self.node, *args],
            env={**os.environ, **self.env()},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl {' '.join(args)}: {result.stderr.strip() or result.stdout.strip()}"
            )
        return result.stdout

    def start(self) -> None:
        if self.process is None:
            self.process = self.processes.spawn("rabbitmq", [self.SERVER], self.env())
        else:
            self.process.start()
        wait_until(lambda: tcp_open("127.0.0.1", self.port), timeout=120, what="private RabbitMQ port")
        self.ctl("await_startup")

    def wait_ready(self) -> None:
        """After start_app: the AMQP port answers again."""
        wait_until(lambda: tcp_open("127.0.0.1", self.port), timeout=120, what="private RabbitMQ port")

    def stop_app(self) -> None:
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        self.wait_ready()

    def kill(self) -> None:
        """SIGKILL the node's Erlang VM (and what it spawned), by PID."""
        assert self.process is not None
        for child in self.process.descendants():
            try:
                child.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        self.process.kill9()

    def queue_depths(self) -> dict[str, int]:
        output = self.ctl("list_queues", "name", "messages")
        depths = {}
        for line in output.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                depths[parts[0]] = int(parts[1])
        return depths


class PrivateRedis:
    """A redis-server of the test's own, without persistence: killing it loses every key."""

    def __init__(self, processes: ProcessManager) -> None:
        self.processes = processes
        self.port = free_port()
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (make services-up installs it)")
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        if self.process is None:
            self.process = self.processes.spawn("redis", argv)
        else:
            self.process.start()
        wait_until(lambda: _redis_ping(self.port), timeout=30, what="private redis")

    def lose_everything(self) -> None:
        """kill -9 and start again empty: what a Redis restart without persistence does."""
        assert self.process is not None
        self.process.kill9()
        self.start()


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------------
# Publishing straight to the broker (as a relay would)


def publish(amqp_url: str, messages: Sequence[Any]) -> None:
    """Publish protocol-2 ``TaskMessage``s (persistent, mandatory, confirmed) to the events exchange."""
    from parley_common.testing import rabbitmq

    rabbitmq.publish(amqp_url, messages)


def drain_queue(amqp_url: str, queue: str) -> list[Any]:
    import asyncio

    from parley_common.testing import rabbitmq

    return asyncio.run(rabbitmq.drain(amqp_url, queue))


def queue_depth(amqp_url: str, queue: str) -> int:
    import asyncio

    from parley_common.testing import rabbitmq

    return asyncio.run(rabbitmq.queue_depth(amqp_url, queue))


def death_reason(message: Any) -> str:
    deaths = (message.headers or {}).get("x-death") or []
    return str(deaths[0].get("reason")) if deaths else ""
