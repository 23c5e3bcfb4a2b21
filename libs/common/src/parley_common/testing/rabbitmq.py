"""RabbitMQ test helpers: one vhost per test session (or test), and queue inspection.

Vhosts are managed with ``rabbitmqctl`` on this machine's broker; queue depth is read with a passive
declare on a plain (non-robust) channel, which always reports the broker's current count.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Sequence
from urllib.parse import quote, urlsplit, urlunsplit

import aio_pika

from parley_common.messaging import topology
from parley_common.messaging.celery_protocol import TaskMessage
from parley_common.messaging.topology import QUEUES, ConsumerQueue


def _ctl(*args: str) -> str:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        raise RuntimeError("rabbitmqctl not found: vhost isolation needs the local broker's CLI")
    result = subprocess.run([ctl, "-q", *args], capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"rabbitmqctl {' '.join(args)} failed: {result.stderr.strip() or result.stdout.strip()}"
        )
    return result.stdout


def create_vhost(base_url: str, vhost: str) -> str:
    """Create ``vhost`` with full permissions for the URL's user; returns the URL pointing at it."""
    parts = urlsplit(base_url)
    _ctl("add_vhost", vhost)
    _ctl("set_permissions", "-p", vhost, parts.username or "guest", ".*", ".*", ".*")
    return urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), parts.query, parts.fragment))


def delete_vhost(vhost: str) -> None:
    try:
        _ctl("delete_vhost", vhost)
    except RuntimeError:
        pass


def list_vhosts() -> list[str]:
    return [
        line.strip()
        for line in _ctl("list_vhosts", "name").splitlines()
        if line.strip() and line.strip() != "name"
    ]


async def queue_depth(url: str, queue: str) -> int:
    """Messages ready in ``queue`` (not counting unacknowledged ones)."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)
    finally:
        await connection.close()


async def drain(url: str, queue: str, limit: int = 10_000) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Take (and acknowledge) every message ready in ``queue``."""
    connection = await aio_pika.connect(url)
    messages = []
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        for _ in range(limit):
            message = await declared.get(no_ack=True, fail=False)
            if message is None:
                break
            messages.append(message)
    finally:
        await connection.close()
    return messages


async def publish_async(
    url: str, messages: Sequence[TaskMessage], queues: Sequence[ConsumerQueue] = QUEUES
) -> None:
    """Publish protocol-2 messages as a relay does (persistent, mandatory, confirmed, all in flight).

    The topology of ``queues`` is declared first, so the messages have somewhere to go.
    """
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await topology.declare(channel, queues=tuple(queues))
        await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(
                        msg.body,
                        headers=msg.headers,
                        content_type=msg.content_type,
                        content_encoding=msg.content_encoding,
                        message_id=msg.message_id,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=msg.routing_key,
                    mandatory=True,
                )
                for msg in messages
            )
        )
    finally:
        await connection.close()


def publish(url: str, messages: Sequence[TaskMessage], queues: Sequence[ConsumerQueue] = QUEUES) -> None:
    """:func:`publish_async` from synchronous code."""
    asyncio.run(publish_async(url, messages, queues))
