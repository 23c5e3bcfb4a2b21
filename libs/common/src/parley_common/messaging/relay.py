"""The outbox relay: publishes committed outbox rows to RabbitMQ, then marks them published.

One loop per process, any number of processes: each batch is claimed with ``FOR UPDATE SKIP LOCKED`` so
relays never publish the same row concurrently. A batch is published with publisher confirms, all of it
in flight at once (awaiting each confirm alone caps near 1,000 msg/s), ``mandatory`` (an unroutable event
is an error, not a silent drop) and persistent. A row is marked published only after its confirm, in the
same transaction that claimed it, so a crash between confirm and commit publishes it again: duplicates are
possible, loss is not, and consumers deduplicate on the event id.

While the broker is unreachable rows simply stay pending and the relay reconnects with capped backoff;
the outbox absorbs the outage. A row the broker refuses (nack, unroutable) backs off on its own.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from aio_pika.exceptions import DeliveryError, PublishError
from sqlalchemy import Table, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from parley_common.logs import get_logger
from parley_common.messaging import topology
from parley_common.messaging.celery_protocol import payload_message
from parley_common.metrics import OUTBOX_FAILED, OUTBOX_PUBLISHED

log = get_logger("parley.relay")


class BrokerUnavailable(Exception):
    """The connection or channel is gone; the batch stays pending and the relay reconnects."""


@dataclass(frozen=True)
class RelayConfig:
    batch_size: int = 500
    idle_poll: float = 0.05  # seconds between polls when the outbox is empty
    publish_timeout: float = 10.0
    max_reconnect_delay: float = 2.0
    purge_after: timedelta = timedelta(days=3)  # published rows kept this long (audit, debugging)


class OutboxRelay:
    """Moves rows of one outbox table to the broker."""

    def __init__(
        self,
        engine: AsyncEngine,
        table: Table,
        amqp_url: str,
        *,
        service: str,
        config: RelayConfig | None = None,
    ) -> None:
        self.engine = engine
        self.table = table
        self.amqp_url = amqp_url
        self.service = service
        self.config = config or RelayConfig()
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None

    async def connect(self) -> None:
        self._connection = await aio_pika.connect(
            self.amqp_url, client_properties={"connection_name": f"{self.service}.relay"}
        )
        self._channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        self._exchange = await topology.declare(self._channel)

    async def close(self) -> None:
        if self._connection is not None and not self._connection.is_closed:
            await self._connection.close()
        self._connection = self._channel = self._exchange = None

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set; survives broker and database outages."""
        delay = 0.1
        last_purge = 0.0
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                if self._exchange is None or self._channel is None or self._channel.is_closed:
                    await self.close()
                    await self.connect()
                    log.info("relay.connected")
                published = await self.relay_once()
                delay = 0.1
                if loop.time() - last_purge > 600:
                    await self.purge()
                    last_purge = loop.time()
                if published < self.config.batch_size:
                    await _sleep_or_stop(stop, self.config.idle_poll)
            except (
                TimeoutError,
                BrokerUnavailable,
                aio_pika.exceptions.AMQPError,
                ConnectionError,
                OSError,
            ) as exc:
                log.warning("relay.broker_unavailable", error=type(exc).__name__, retry_in=round(delay, 2))
                await self.close()
                await _sleep_or_stop(stop, delay)
                delay = min(delay * 2, self.config.max_reconnect_delay)
            except Exception as exc:  # database errors and the unexpected: back off, never die
                log.exception("relay.error", error=type(exc).__name__)
                await _sleep_or_stop(stop, delay)
                delay = min(delay * 2, self.config.max_reconnect_delay)
        await self.close()

    async def relay_once(self) -> int:
        """Claim, publish and mark one batch; returns how many rows were published."""
        t = self.table
        async with self.engine.begin() as conn:
            rows = (
                await conn.execute(
                    select(t.c.id, t.c.event_id, t.c.event_type, t.c.payload, t.c.attempts)
                    .where(t.c.published_at.is_(None), t.c.next_attempt_at <= func.now())
                    .order_by(t.c.id)
                    .limit(self.config.batch_size)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not rows:
                return 0
            outcomes = await asyncio.gather(*(self._publish(row) for row in rows), return_exceptions=True)
            confirmed = [row.id for row, outcome in zip(rows, outcomes, strict=True) if outcome is None]
            if confirmed:
                await conn.execute(update(t).where(t.c.id.in_(confirmed)).values(published_at=func.now()))
                OUTBOX_PUBLISHED.labels(self.service).inc(len(confirmed))
            await self._record_failures(conn, rows, outcomes)
        if len(confirmed) < len(rows) and any(isinstance(o, BrokerUnavailable) for o in outcomes):
            raise BrokerUnavailable(f"{len(rows) - len(confirmed)} publishes lost their channel")
        return len(confirmed)

    async def _publish(self, row: Any) -> None:
        if self._exchange is None:
            raise BrokerUnavailable("not connected")
        msg = payload_message(row.event_type, str(row.event_id), row.payload)
        message = aio_pika.Message(
            msg.body,
            headers=msg.headers,
            content_type=msg.content_type,
            content_encoding=msg.content_encoding,
            message_id=msg.message_id,
            correlation_id=msg.correlation_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        try:
            await self._exchange.publish(
                message, routing_key=msg.routing_key, mandatory=True, timeout=self.config.publish_timeout
            )
        except (PublishError, DeliveryError):
            raise
        except Exception as exc:
            raise BrokerUnavailable(type(exc).__name__) from exc

    async def _record_failures(
        self, conn: AsyncConnection, rows: Sequence[Any], outcomes: Sequence[BaseException | None]
    ) -> None:
        t = self.table
        for row, outcome in zip(rows, outcomes, strict=True):
            if outcome is None or isinstance(outcome, BrokerUnavailable):
                continue  # confirmed, or the whole connection is down (not this row's fault)
            reason = "unroutable" if isinstance(outcome, PublishError) else "refused"
            OUTBOX_FAILED.labels(self.service, reason).inc()
            backoff = min(2 ** min(row.attempts, 10), 300) * (0.5 + random.random())
            log.error("relay.publish_refused", event_id=str(row.event_id), type=row.event_type, reason=reason)
            await conn.execute(
                update(t)
                .where(t.c.id == row.id)
                .values(
                    attempts=t.c.attempts + 1,
                    last_error=f"{reason}: {type(outcome).__name__}",
                    next_attempt_at=func.now() + timedelta(seconds=backoff),
                )
            )

    async def purge(self) -> int:
        """Delete rows published longer ago than ``purge_after``."""
        t = self.table
        async with self.engine.begin() as conn:
            result = await conn.execute(
                t.delete().where(t.c.published_at < func.now() - self.config.purge_after)
            )
        return int(getattr(result, "rowcount", 0) or 0)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass


def watch_relay_health(relay: OutboxRelay, settings: Any, stop: asyncio.Event) -> None:
    """Serve ``/livez``, ``/readyz`` and ``/metrics`` on the metrics port, when one is set, for the probes.

    Ready while the relay holds an open broker channel and the database answers; not ready once stopping.
    """
    from parley_common.health import metrics_port, serve_health, settings_checks

    port = metrics_port(settings)
    if port is None:
        return
    health = serve_health(port)
    for name, check in settings_checks(settings, name=f"{relay.service}.relay").items():
        health.add_check(name, check)
    health.add_check("broker", lambda: relay._channel is not None and not relay._channel.is_closed)
    health.add_check("running", lambda: not stop.is_set())
    health.set_started()


def run_relay_process(service: str, settings: Any, table: Table, config: RelayConfig | None = None) -> None:
    """The body of a ``parley-<service>-relay`` process: relay until SIGTERM/SIGINT.

    ``settings`` must carry the database, RabbitMQ and process settings (``DatabaseSettings``,
    ``RabbitSettings``, ``ParleySettings``).
    """
    import signal

    from parley_common.db.engine import create_async_db_engine
    from parley_common.process import init_process

    init_process(service, "relay", settings)

    async def main() -> None:
        engine = create_async_db_engine(
            settings.database_url, application_name=f"{service}.relay", pool_size=2, max_overflow=0
        )
        relay = OutboxRelay(
            engine, table, settings.rabbitmq_url.get_secret_value(), service=service, config=config
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        watch_relay_health(relay, settings, stop)
        log.info("relay.started", table=str(table))
        try:
            await relay.run(stop)
        finally:
            await engine.dispose()
            log.info("relay.stopped")

    asyncio.run(main())
