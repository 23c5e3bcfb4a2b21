"""RabbitMQ test helpers: one vhost per test session (or test), and queue inspection.

Vhosts are managed with ``rabbitmqctl`` on this machine's broker; queue depth is read with a passive
declare on a plain (non-robust) channel, which always reports the broker's current count.
"""

from __future__ import annotations

import shutil
import subprocess
from urllib.parse import quote, urlsplit, urlunsplit

import aio_pika


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
