"""``parley-usage-worker``: the ledger writer.

A supervising main process runs ``PARLEY_WORKER_CONCURRENCY`` consumer processes on the ``usage.events``
quorum queue. Each takes events in bounded batches (``PARLEY_WORKER_BATCH_SIZE``, at most
``PARLEY_WORKER_PREFETCH`` unacknowledged) and writes a batch in one transaction: ledger rows, rollups,
period totals and threshold events together. The messages are acknowledged only after that commit, so a
crash anywhere returns them to the queue and the ledger's dedup key absorbs the redelivery.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from parley_common.db.engine import create_async_db_engine
from parley_common.events import TokensConsumedV1
from parley_common.logs import get_logger
from parley_common.messaging import topology
from parley_common.messaging.batch import BatchConsumer
from parley_common.messaging.supervisor import run_supervised
from sqlalchemy.exc import DataError, IntegrityError

from parley_usage.config import Settings
from parley_usage.ledger import record_batch

log = get_logger(__name__)

# The data itself is refused (a value too long or out of range): split the batch, isolate the event.
POISON = (DataError, IntegrityError)


def run(settings: Settings) -> None:
    run_supervised("usage", "worker", settings, lambda stop, ready: consume(settings, stop, ready))


async def consume(settings: Settings, stop: asyncio.Event, ready: Callable[[], None]) -> None:
    """One consumer process: until ``stop``."""
    engine = create_async_db_engine(
        settings.database_url, application_name="usage.worker", pool_size=2, max_overflow=0
    )

    async def handle(events: Sequence[TokensConsumedV1]) -> None:
        result = await record_batch(engine, events)
        if result.duplicates:
            log.info("ledger.duplicate_ignored", duplicates=result.duplicates, events=len(events))

    consumer = BatchConsumer(
        settings.rabbitmq_url.get_secret_value(),
        topology.USAGE,
        TokensConsumedV1,
        handle,
        service="usage",
        poison=POISON,
        config=settings.batch_config(),
        on_ready=ready,
    )
    try:
        await consumer.run(stop)
    finally:
        await engine.dispose()
