"""Test support for webhooks and notify: isolated resources, the service's processes, receivers,
internal tokens and event publishing. Everything is a real process on loopback."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import httpx
from parley_common.auth.internal import InternalIdentity, mint_internal_token
from parley_common.auth.keys import SigningKey, generate_private_key_pem, jwks_document, load_signing_keys
from parley_common.db.admin import drop_database
from parley_common.events import Event
from parley_common.messaging import topology
from parley_common.messaging.celery_protocol import event_message
from parley_common.testing import rabbitmq, resources
from parley_common.testing.net import free_port
from parley_common.testing.processes import ManagedProcess, ProcessManager, venv_command
from parley_common.testing.services import TestServices

from tests.support.db import query

RECEIVER = Path(__file__).with_name("receiver.py")
SCHEMAS = [("parley_webhooks", "webhooks"), ("parley_notify", "notify")]


@dataclass
class Isolated:
    """A database (webhooks and notify schemas) and a RabbitMQ vhost of one's own."""

    database_url: str
    amqp_url: str
    vhost: str


@contextmanager
def isolated_resources(services: TestServices) -> Iterator[Isolated]:
    tag = resources.new_tag()
    database_url = resources.create_database(services.database_url, tag, SCHEMAS)
    amqp_url = rabbitmq.create_vhost(services.rabbitmq_url, tag)
    try:
        yield Isolated(database_url, amqp_url, tag)
    finally:
        rabbitmq.delete_vhost(tag)
        drop_database(database_url)


@dataclass
class Receiver:
    process: ManagedProcess
    port: int
    control_url: str
    canaries: list[str] = field(default_factory=list)

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}/{path.lstrip('/')}"

    def requests(self, prefix: str = "/") -> list[dict[str, Any]]:
        records = httpx.get(self.control_url + "/_control/requests", timeout=10).json()
        return [r for r in records if r["path"].startswith(prefix)]

    def canary_hits(self) -> dict[str, int]:
        hits: dict[str, int] = httpx.get(self.control_url + "/_control/canary", timeout=10).json()
        return hits


def start_receiver(
    manager: ProcessManager,
    *,
    name: str = "receiver",
    canaries: Iterable[str] = (),
    tls: tuple[Path, Path] | None = None,
) -> Receiver:
    port = free_port()
    argv = [sys.executable, str(RECEIVER), "--port", str(port)]
    control_port = port
    if tls is not None:
        control_port = free_port()
        argv += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1]), "--control-port", str(control_port)]
    canaries = list(canaries)
    for canary in canaries:
        argv += ["--canary", canary]
    control_url = f"http://127.0.0.1:{control_port}"
    process = manager.spawn(name, argv, ready_url=control_url + "/livez")
    return Receiver(process, port, control_url, canaries)


@dataclass
class Identity:
    key: SigningKey
    jwks: str

    @classmethod
    def new(cls) -> Identity:
        keys = load_signing_keys(generate_private_key_pem())
        return cls(keys[0], json.dumps(jwks_document(keys)))

    def token(self, user_id: uuid.UUID) -> str:
        return mint_internal_token(self.key, InternalIdentity(user_id=user_id), ttl=600)


@dataclass
class Stack:
    """The webhooks service's processes (and notify's, when asked) on one isolated database and vhost."""

    res: Isolated
    identity: Identity
    env: dict[str, str]
    api_url: str
    processes: dict[str, ManagedProcess]

    def client(self, user_id: uuid.UUID) -> httpx.Client:
        return httpx.Client(
            base_url=self.api_url + "/v1/webhooks",
            headers={"authorization": f"Bearer {self.identity.token(user_id)}"},
            timeout=20,
        )

    def query(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        return query(self.res.database_url, sql, **params)

    def execute(self, sql: str, **params: Any) -> None:
        """Run a statement and commit (test set-up the API would refuse to make)."""
        from sqlalchemy import create_engine, text

        engine = create_engine(self.res.database_url)
        try:
            with engine.begin() as conn:
                conn.execute(text(sql), params)
        finally:
            engine.dispose()

    def publish(self, events: list[Event]) -> None:
        publish(self.res.amqp_url, events)


def base_env(res: Isolated, identity: Identity, **settings: str) -> dict[str, str]:
    return {
        "PARLEY_ENV": "test",
        "PARLEY_LOG_LEVEL": "INFO",
        "PARLEY_DATABASE_URL": res.database_url,
        "PARLEY_RABBITMQ_URL": res.amqp_url,
        "PARLEY_INTERNAL_JWKS": identity.jwks,
        **settings,
    }


def start_stack(
    manager: ProcessManager,
    res: Isolated,
    settings: dict[str, str],
    *,
    notify_env: dict[str, str] | None = None,
    worker_env: dict[str, str] | None = None,
    with_worker: bool = True,
) -> Stack:
    """API and relay, plus (``with_worker``) the delivery worker and beat, plus (``notify_env``) notify."""
    identity = Identity.new()
    env = base_env(res, identity, **settings)
    port = free_port()
    processes = {
        "api": manager.spawn(
            "webhooks-api",
            [venv_command("parley-webhooks-api")],
            {**env, "PARLEY_HTTP_PORT": str(port)},
            ready_url=f"http://127.0.0.1:{port}/readyz",
        ),
        "relay": manager.spawn("webhooks-relay", [venv_command("parley-webhooks-relay")], env),
    }
    if with_worker:
        # Beat first, so it is stopped last: an idle Celery worker notices SIGTERM only at its next
        # wake-up (seconds), while one receiving beat's polls stops at once.
        processes["beat"] = manager.spawn("webhooks-beat", [venv_command("parley-webhooks-beat")], env)
        processes["worker"] = start_worker(manager, {**env, **(worker_env or {})})
    processes["relay"].wait_for_log("relay.connected")
    if notify_env is not None:
        processes["notify"] = start_notify(manager, {**env, **notify_env})
    return Stack(res, identity, env, f"http://127.0.0.1:{port}", processes)


def start_worker(
    manager: ProcessManager, env: dict[str, str], name: str = "webhooks-worker"
) -> ManagedProcess:
    worker = manager.spawn(name, [venv_command("parley-webhooks-worker")], env)
    worker.wait_for_log(r"ready\.$", timeout=60)
    return worker


def start_notify(manager: ProcessManager, env: dict[str, str], name: str = "notify-worker") -> ManagedProcess:
    worker = manager.spawn(name, [venv_command("parley-notify-worker")], env)
    worker.wait_for_log(r"ready\.$", timeout=60)
    return worker


def restart(process: ManagedProcess) -> None:
    """Start a stopped or killed worker again and wait until it consumes."""
    seen = len(process.json_lines())
    process.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any(str(r.get("event", "")).endswith("ready.") for r in process.json_lines()[seen:]):
            return
        if not process.alive():
            break
        time.sleep(0.1)
    raise RuntimeError(f"{process.name} did not come back\n{process.tail()}")


async def _publish(url: str, events: list[Event]) -> None:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await topology.declare(channel)
        for start in range(0, len(events), 200):
            messages = []
            for event in events[start : start + 200]:
                msg = event_message(event)
                message = aio_pika.Message(
                    msg.body,
                    headers=msg.headers,
                    content_type=msg.content_type,
                    content_encoding=msg.content_encoding,
                    message_id=msg.message_id,
                    correlation_id=msg.correlation_id,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                )
                messages.append(exchange.publish(message, routing_key=msg.routing_key, mandatory=True))
            await asyncio.gather(*messages)
    finally:
        await connection.close()


def publish(amqp_url: str, events: list[Event]) -> None:
    """Publish events the way the relays do (task protocol 2, persistent, confirmed, mandatory)."""
    asyncio.run(_publish(amqp_url, events))


def wait_for(
    check: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.2, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")


# --- reading the delivery state of one endpoint -------------------------------------------------------


def new_endpoint(stack: Stack, user_id: uuid.UUID, url: str, types: list[str] | None = None) -> dict:
    with stack.client(user_id) as client:
        response = client.post(
            "/endpoints", json={"url": url, "event_types": types or ["conversation.message_completed.v1"]}
        )
    assert response.status_code == 201, response.text
    return response.json()


def deliveries(stack: Stack, endpoint_id: str) -> list[dict]:
    return stack.query(
        "SELECT * FROM webhooks.deliveries WHERE endpoint_id = :e ORDER BY created_at", e=endpoint_id
    )


def attempts(stack: Stack, delivery_id: object) -> list[dict]:
    return stack.query(
        "SELECT * FROM webhooks.attempts WHERE delivery_id = :d ORDER BY number, id", d=delivery_id
    )


def endpoint_row(stack: Stack, endpoint_id: str) -> dict:
    return stack.query("SELECT * FROM webhooks.endpoints WHERE id = :e", e=endpoint_id)[0]


def settled(stack: Stack, endpoint_id: str, count: int) -> list[dict]:
    rows = deliveries(stack, endpoint_id)
    return rows if len(rows) == count and all(r["status"] != "pending" for r in rows) else []
