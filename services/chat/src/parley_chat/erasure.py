"""``parley-chat-worker``: erases what chat holds of a deleted account (``user.deleted.v1``).

A supervising main process runs ``PARLEY_WORKER_CONCURRENCY`` consumer processes on the ``chat.events``
quorum queue (the usage worker's batch consumer). A batch of deletions is one transaction: the users'
conversations (their messages go with them), documents (their chunks and vectors go with them) and call
records. Messages are acknowledged after the commit, so a crash returns them to the queue; erasing twice
erases nothing more, so a redelivery is harmless.

Then the users' cached answers and semantic-cache partitions are removed from Redis (keys carry the user
id). That part is best effort: if Redis is unreachable the entries still expire with the cache's TTL
(``PARLEY_CACHE_TTL_SECONDS``), and nothing in them can be reached without the deleted account.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from uuid import UUID

import redis.asyncio as redis
from parley_common.db.engine import create_async_db_engine
from parley_common.events import UserDeletedV1
from parley_common.logs import get_logger
from parley_common.messaging import topology
from parley_common.messaging.batch import BatchConsumer
from parley_common.messaging.supervisor import run_supervised
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine

from parley_chat.cache import user_cache_prefix
from parley_chat.config import Settings
from parley_chat.models import Completion, Conversation, Document
from parley_chat.semantic import user_partition_prefix

log = get_logger(__name__)

# Each table's rows of a user; conversations take their messages along, documents their chunks (FKs
# ON DELETE CASCADE on (user_id, ...)).
ERASED = (Conversation, Document, Completion)


def run(settings: Settings) -> None:
    run_supervised("chat", "worker", settings, lambda stop, ready: consume(settings, stop, ready))


async def erase(engine: AsyncEngine, user_ids: Sequence[UUID]) -> dict[str, int]:
    """Delete the users' rows in one transaction; rows deleted, by table."""
    counts = {}
    async with engine.begin() as conn:
        for model in ERASED:
            result = await conn.execute(delete(model).where(model.user_id.in_(user_ids)))
            counts[model.__tablename__] = int(result.rowcount or 0)
    return counts


async def purge_cache(client: redis.Redis, prefix: str, user_id: UUID) -> int:
    """Remove the user's cached answers and semantic partitions; keys removed."""
    removed = 0
    for start in (user_cache_prefix(prefix, user_id), user_partition_prefix(prefix, user_id)):
        batch: list[bytes] = []
        async for key in client.scan_iter(match=start + "*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                removed += await client.unlink(*batch)
                batch = []
        if batch:
            removed += await client.unlink(*batch)
    return removed


async def consume(settings: Settings, stop: asyncio.Event, ready: Callable[[], None]) -> None:
    """One consumer process: until ``stop``."""
    engine = create_async_db_engine(
        settings.database_url, application_name="chat.worker", pool_size=2, max_overflow=0
    )
    cache = redis.Redis.from_url(
        settings.cache_url.get_secret_value(),
        socket_connect_timeout=settings.redis_connect_timeout,
        socket_timeout=settings.redis_command_timeout * 10,  # a scan may take many round trips
    )

    async def handle(events: Sequence[UserDeletedV1]) -> None:
        user_ids = sorted({event.user_id for event in events})
        counts = await erase(engine, user_ids)
        log.info("erasure.done", users=len(user_ids), **counts)
        for user_id in user_ids:
            try:
                keys = await purge_cache(cache, settings.redis_key_prefix, user_id)
            except Exception as exc:  # noqa: BLE001 - best effort: the TTL bounds what is left
                log.warning("erasure.cache_purge_failed", user_id=str(user_id), error=type(exc).__name__)
            else:
                log.info("erasure.cache_purged", user_id=str(user_id), keys=keys)

    consumer = BatchConsumer(
        settings.rabbitmq_url.get_secret_value(),
        topology.CHAT,
        UserDeletedV1,
        handle,
        service="chat",
        config=settings.batch_config(),
        on_ready=ready,
    )
    try:
        await consumer.run(stop)
    finally:
        await cache.aclose()
        await engine.dispose()
