"""The outbox relay: publishes committed outbox rows to RabbitMQ, then marks them published.

Any number of processes, and ``concurrency`` claim-and-publish loops in each: every batch is claimed with
``FOR UPDATE SKIP LOCKED`` so loops never publish the same row concurrently, and while one loop waits for
its batch's confirms another claims and publishes the next. A batch is published with publisher confirms,
all of it in flight at once (awaiting each confirm alone caps near 1,000 msg/s), ``mandatory`` (an
unroutable event is an error, not a silent drop) and persistent. A row is marked published only after its
confirm, in the same transaction that claimed it, so a crash between confirm and commit publishes it
again: duplicates are possible, loss is not, and consumers deduplicate on the event id.

While the broker is unreachable rows simply stay pending and the relay reconnects with capped backoff;
the outbox absorbs the outage. A row the broker refuses (nack, unroutable) backs off on its own.

The hot path does as little per message as it can, because at thousands of messages a second the
publisher's CPU is the limit: a row is read as JSON text and goes into the message body without being
parsed and serialised again, and a whole batch is handed to the connection in one piece (one task, one
lock, one socket write per batch; see :func:`_enqueue_publishes`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any, cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection
from aio_pika.exceptions import DeliveryError, PublishError
from aiormq.abc import ChannelFrame
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader
from sqlalchemy import BigInteger, Table, Text, any_, func, select, update
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from parley_common.logs import get_logger
from parley_common.messaging import topology
from parley_common.messaging.celery_protocol import TaskMessage, raw_payload_message
from parley_common.metrics import OUTBOX_FAILED, OUTBOX_PUBLISHED

log = get_logger("parley.relay")


class BrokerUnavailable(Exception):
    """The connection or channel is gone; the batch stays pending and the relay reconnects."""


@dataclass(frozen=True)
class RelayConfig:
    """How a relay claims, publishes and recovers."""

    # Four loops of 250: while some wait for confirms others claim and publish, and no more than a
    # thousand confirms are pending at once (aiormq's ack handling costs more the more are pending).
    batch_size: int = 250
    idle_poll: float = 0.05  # seconds between polls when the outbox is empty
    publish_timeout: float = 10.0  # for a whole batch's confirms
    max_reconnect_delay: float = 2.0
    purge_after: timedelta = timedelta(days=3)  # published rows kept this long (audit, debugging)
    concurrency: int = 4  # claim-and-publish loops per process, each holding one database connection


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
        self._channel: aiormq.Channel | None = None

    @property
    def connected(self) -> bool:
        """True while the publishing channel is open."""
        return self._channel is not None and not self._channel.is_closed

    async def connect(self) -> None:
        """Open the connection and a confirming channel, and declare the topology."""
        connection = await aio_pika.connect(
            self.amqp_url, timeout=10, client_properties={"connection_name": f"{self.service}.relay"}
        )
        self._connection = connection
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await topology.declare(channel)
        self._channel = cast(aiormq.Channel, await channel.get_underlay_channel())

    async def close(self) -> None:
        """Close the connection (unconfirmed publishes fail; their rows stay pending)."""
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and not connection.is_closed:
            await connection.close()

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set; survives broker and database outages."""
        delay = 0.1
        while not stop.is_set():
            try:
                if not self.connected:
                    await self.close()
                    await self.connect()
                    log.info("relay.connected")
                delay = 0.1
                await self._pump_all(stop)
            except (
                TimeoutError,
                BrokerUnavailable,
                aio_pika.exceptions.AMQPError,
                aiormq.exceptions.AMQPError,
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

    async def _pump_all(self, stop: asyncio.Event) -> None:
        """Run ``concurrency`` loops on the current connection; the first failure stops them all."""
        pumps = [
            asyncio.ensure_future(self._pump(stop, purges=i == 0)) for i in range(self.config.concurrency)
        ]
        try:
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def _pump(self, stop: asyncio.Event, *, purges: bool) -> None:
        loop = asyncio.get_running_loop()
        last_purge = 0.0 if purges else float("inf")
        while not stop.is_set():
            published = await self.relay_once()
            if loop.time() - last_purge > 600:
                await self.purge()
                last_purge = loop.time()
            if published < self.config.batch_size:
                await _sleep_or_stop(stop, self.config.idle_poll)

    async def relay_once(self) -> int:
        """Claim, publish and mark one batch; returns how many rows were published."""
        t = self.table
        # Claim ids first, without ORDER BY: after a burst the planner's statistics are stale and an
        # ORDER BY made it read, render and sort every pending row to keep 500 of them. Claimed this way,
        # a batch costs the same whatever the backlog; rows still go out in about the order they were
        # written (heap order), and delivery order was never promised anyway.
        claimed = (
            select(t.c.id)
            .where(t.c.published_at.is_(None), t.c.next_attempt_at <= func.now())
            .limit(self.config.batch_size)
            .with_for_update(skip_locked=True)
            .cte("claimed")
        )
        query = select(
            t.c.id,
            t.c.event_id,
            t.c.event_type,
            t.c.attempts,
            t.c.payload.cast(Text).label("payload_json"),
            t.c.payload["traceparent"].astext.label("traceparent"),
            t.c.payload["source"].astext.label("source"),
        ).join(claimed, claimed.c.id == t.c.id)
        async with self.engine.begin() as conn:
            rows = (await conn.execute(query)).all()
            if not rows:
                return 0
            outcomes = await self._publish_all(rows)
            confirmed = [row.id for row, outcome in zip(rows, outcomes, strict=True) if outcome is None]
            if confirmed:
                await conn.execute(
                    update(t)
                    .where(t.c.id == any_(sql_cast(confirmed, ARRAY(BigInteger))))
                    .values(published_at=func.now())
                )
                OUTBOX_PUBLISHED.labels(self.service).inc(len(confirmed))
            await self._record_failures(conn, rows, outcomes)
        if len(confirmed) < len(rows) and any(isinstance(o, BrokerUnavailable) for o in outcomes):
            raise BrokerUnavailable(f"{len(rows) - len(confirmed)} publishes lost their channel")
        return len(confirmed)

    async def _publish_all(self, rows: Sequence[Any]) -> list[BaseException | None]:
        """Publish every row at once and wait (one deadline for the batch) for the broker's confirms.

        Outcome per row: None (confirmed), ``PublishError`` (unroutable), ``DeliveryError`` (refused) or
        ``BrokerUnavailable`` (the channel went away, or no confirm by the deadline).
        """
        channel = self._channel
        if channel is None or channel.is_closed:
            return [BrokerUnavailable("not connected") for _ in rows]
        messages = [
            raw_payload_message(
                row.event_type,
                str(row.event_id),
                row.payload_json,
                traceparent=row.traceparent,
                source=row.source,
            )
            for row in rows
        ]
        try:
            confirms = await _enqueue_publishes(channel, messages)
        except Exception as exc:  # noqa: BLE001 - the channel closed before the batch went out
            return [BrokerUnavailable(type(exc).__name__) for _ in rows]
        _, pending = await asyncio.wait(confirms, timeout=self.config.publish_timeout)
        outcomes: list[BaseException | None] = []
        for confirm in confirms:
            if confirm in pending:
                confirm.cancel()
                outcomes.append(BrokerUnavailable("confirm timed out"))
            elif confirm.cancelled():
                outcomes.append(BrokerUnavailable("cancelled"))
            else:
                error = confirm.exception()
                if error is None or isinstance(error, PublishError | DeliveryError):
                    outcomes.append(error)
                else:
                    outcomes.append(BrokerUnavailable(type(error).__name__))
        return outcomes

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


async def _enqueue_publishes(
    channel: aiormq.Channel, messages: Sequence[TaskMessage]
) -> list[asyncio.Future[Any]]:
    """Hand a whole batch of persistent, mandatory publishes to the connection's writer in one piece.

    This is what aiormq's ``basic_publish`` does for one message (the next delivery tag, a confirmation
    future registered under it, the message id mapped to it so a ``basic.return`` finds it, then the
    frames), done once per batch under the channel lock: one task, one lock and one socket write per batch
    instead of per message, which is most of a publisher's CPU at thousands of messages a second. The
    channel's reader settles the futures exactly as for ``basic_publish`` (ack, nack, return, or close).
    Written against aiormq 7.2 (pinned in uv.lock); the relay tests exercise every outcome.
    """
    futures: list[asyncio.Future[Any]] = []
    frames: list[Any] = []
    async with channel.lock:
        max_size: int = channel.max_content_size
        for msg in messages:
            channel.delivery_tag += 1
            tag: int = channel.delivery_tag
            future = channel.create_future()
            channel.confirmations[tag] = future
            channel.message_id_delivery_tag[msg.message_id] = tag
            future.add_done_callback(partial(_forget_message_id, channel, msg.message_id, tag))
            futures.append(future)
            properties = Basic.Properties(
                headers=msg.headers,
                content_type=msg.content_type,
                content_encoding=msg.content_encoding,
                message_id=msg.message_id,
                correlation_id=msg.correlation_id,
                delivery_mode=2,  # persistent
            )
            frames.append(
                Basic.Publish(exchange=topology.EXCHANGE, routing_key=msg.routing_key, mandatory=True)
            )
            frames.append(ContentHeader(properties=properties, body_size=len(msg.body)))
            frames.extend(ContentBody(msg.body[i : i + max_size]) for i in range(0, len(msg.body), max_size))
        try:
            await channel.write_queue.put(ChannelFrame.marshall(channel_number=channel.number, frames=frames))
        except BaseException:
            # Nothing reached the broker (cancelled while the writer's queue was full): give the delivery
            # tags back, as basic_publish does, or every later confirm would settle the wrong future.
            channel.delivery_tag -= len(messages)
            for offset, (msg, future) in enumerate(zip(messages, futures, strict=True)):
                channel.confirmations.pop(channel.delivery_tag + 1 + offset, None)
                _forget_message_id(channel, msg.message_id, channel.delivery_tag + 1 + offset, None)
                future.cancel()
            raise
    return futures


def _forget_message_id(channel: aiormq.Channel, message_id: str, tag: int, _: Any) -> None:
    mapping: dict[str, int] = channel.message_id_delivery_tag
    if mapping.get(message_id) == tag:
        mapping.pop(message_id, None)


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
    ``RabbitSettings``, ``ParleySettings``); with a metrics port (``metrics_port`` or ``PARLEY_METRICS_PORT``)
    the relay serves ``/metrics``, ``/livez`` and ``/readyz`` there (see :func:`watch_relay_health`).
    """
    import signal

    from parley_common.db.engine import create_async_db_engine
    from parley_common.process import init_process

    init_process(service, "relay", settings)
    config = config or RelayConfig()

    async def main() -> None:
        engine = create_async_db_engine(
            settings.database_url,
            application_name=f"{service}.relay",
            pool_size=config.concurrency,
            max_overflow=1,
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
