"""A bounded-batch consumer: many events, one database transaction, acknowledged only after it commits.

Celery runs one task per message, and with prefetch 1 and one transaction per event a worker on a small
machine tops out at a few hundred events per second. This consumer keeps Celery's delivery guarantees
with batches instead:

- **At least once.** Up to ``prefetch`` messages are in flight per consumer. They are grouped into batches
  of at most ``max_messages`` (or whatever arrived within ``max_wait`` of the first one) and handed to
  the handler, which writes them in *one* transaction. Only after that transaction committed are the
  messages acknowledged (one ``basic.ack`` with ``multiple``). A crash at any point before the ack, a
  lost connection or a killed process returns every unacknowledged message to the queue, so the handler
  must be idempotent on the event id (it is: a unique key and ``ON CONFLICT DO NOTHING``).
- **Bounded.** ``prefetch`` bounds what one consumer holds; the broker's delivery limit bounds how often a
  message comes back.
- **Nothing is acked silently.** An undecodable message, an unknown task name or an invalid payload is
  rejected without requeue: the queue dead-letters it at once. A transient error (lost connection,
  deadlock, database restart) is retried in place with backoff, then the whole batch is returned to the
  queue (``nack``, requeue), where the delivery limit bounds how often. A *poison* error (the data itself
  is refused, e.g. a value too long for its column) splits the batch in halves until the event that
  fails alone is found; the others commit, and that one is returned to the queue until the delivery limit
  dead-letters it, so one bad event holds nothing else up.

The trade-off against prefetch 1: a killed consumer returns up to ``prefetch`` messages instead of one
(each is redelivered and deduplicated), and an event waits up to ``max_wait`` before it is written.

Messages are Celery task-protocol-2 messages (see :mod:`parley_common.messaging.celery_protocol`), so a
queue can move between a Celery worker and this consumer without any change on the producer side.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import aio_pika
import aiormq
from aiormq.abc import DeliveredMessage
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from parley_common.events import Event
from parley_common.logs import get_logger
from parley_common.messaging import topology
from parley_common.messaging.celery_protocol import event_json
from parley_common.messaging.worker_settings import WorkerSettings
from parley_common.metrics import EVENTS_HANDLED
from parley_common.telemetry import tracer

log = get_logger("parley.batch")

E = TypeVar("E", bound=Event)

BATCH_SIZE = Histogram(
    "parley_batch_size_events",
    "Events per batch handed to a batch handler",
    ["service", "type"],
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2000),
)
BATCH_SECONDS = Histogram(
    "parley_batch_duration_seconds",
    "Time to handle one batch (its transaction, retries included)",
    ["service", "type"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BATCH_RETRIES = Counter(
    "parley_batch_retries_total", "Batch transactions retried after a transient error", ["service", "type"]
)

_TRACE_PROPAGATOR = TraceContextTextMapPropagator()
_MAX_LINKS = 128  # OpenTelemetry's default span link limit


class InvalidMessage(Exception):
    """The message can never be handled (undecodable, unknown task, invalid payload)."""


@dataclass(frozen=True)
class BatchConfig:
    """How a :class:`BatchConsumer` groups, retries and stops."""

    max_messages: int = 500
    max_wait: float = 0.02  # seconds the first message of a batch may wait for others
    prefetch: int = 1000  # unacknowledged messages per consumer; above max_messages, so batches pipeline
    transient_retries: int = 5
    retry_backoff: float = 0.05  # first retry delay, doubled each time
    retry_backoff_max: float = 2.0
    max_reconnect_delay: float = 2.0
    # Batches of at most this many events log one ``event.handled`` line per event, with the event's own
    # trace id; bigger ones (under load) log one ``batch.handled`` line, which costs far less CPU.
    log_events_up_to: int = 20


class BatchWorkerSettings(WorkerSettings):
    """What a batch worker reads, on top of :class:`WorkerSettings` (``PARLEY_WORKER_*``)."""

    worker_batch_size: int = Field(500, ge=1, le=10_000, description="Most events written in one transaction")
    worker_batch_wait_ms: float = Field(
        20.0, ge=0, le=60_000, description="How long the first event of a batch waits for more"
    )
    worker_prefetch: int | None = Field(
        None, ge=1, le=65_535, description="Unacknowledged messages per consumer (default: twice the batch)"
    )
    worker_stop_grace: float = Field(
        20.0, gt=0, description="Seconds a consumer gets on SIGTERM to write and acknowledge what it holds"
    )
    worker_log_events_up_to: int = Field(
        20,
        ge=0,
        description="Batches of at most this many events log one event.handled line per event (with its "
        "trace id); bigger batches log one line (at thousands of events a second, a line per event costs "
        "more CPU than the database writes)",
    )

    def batch_config(self) -> BatchConfig:
        """The :class:`BatchConfig` these settings describe."""
        return BatchConfig(
            max_messages=self.worker_batch_size,
            max_wait=self.worker_batch_wait_ms / 1000,
            prefetch=self.worker_prefetch or min(2 * self.worker_batch_size, 65_535),
            transient_retries=self.transient_retries,
            log_events_up_to=self.worker_log_events_up_to,
        )


@dataclass(slots=True)
class _Delivery:
    message: DeliveredMessage
    tag: int
    received: float


@dataclass
class _ChannelState:
    channel: aiormq.abc.AbstractChannel
    buffer: list[_Delivery] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    full: asyncio.Event = field(default_factory=asyncio.Event)


BatchHandler = Callable[[Sequence[E]], Awaitable[None]]


class _Kwargs(BaseModel, Generic[E]):
    event: E


class BatchConsumer(Generic[E]):
    """Consumes one queue's events of one type in batches; see the module docstring for the guarantees.

    ``handler(events)`` must write every event in one transaction and be idempotent on ``event.id``; it
    may receive the same event twice in one batch (a duplicate publish). Exceptions in ``poison`` mean
    "this data is refused" and trigger the split; every other exception counts as transient.
    """

    def __init__(
        self,
        amqp_url: str,
        queue: topology.ConsumerQueue,
        event_cls: type[E],
        handler: BatchHandler[E],
        *,
        service: str,
        poison: tuple[type[BaseException], ...] = (),
        config: BatchConfig | None = None,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.amqp_url = amqp_url
        self.queue = queue
        self.event_cls = event_cls
        self.type_name: str = event_cls.model_fields["type"].default
        self.handler = handler
        self.service = service
        self.poison = poison
        self.config = config or BatchConfig()
        self.on_ready = on_ready
        # Protocol-2 body ``[args, {"event": …}, embed]`` parsed and validated in one pass (pydantic-core).
        self._body: TypeAdapter[tuple[list[Any], _Kwargs[E], dict[str, Any]]] = TypeAdapter(
            tuple[list[Any], _Kwargs[event_cls], dict[str, Any]]  # type: ignore[valid-type]
        )
        self._size = BATCH_SIZE.labels(service, self.type_name)
        self._seconds = BATCH_SECONDS.labels(service, self.type_name)
        self._retries = BATCH_RETRIES.labels(service, self.type_name)
        self._outcomes = {
            name: EVENTS_HANDLED.labels(service, self.type_name, name)
            for name in ("ok", "invalid", "requeued", "poison")
        }

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; survives broker outages (reconnects with capped backoff).

        On stop, the consumer is cancelled and what it already received is written and acknowledged
        before the connection closes, so a rolling restart returns nothing to the queue.
        """
        delay = 0.1
        while not stop.is_set():
            try:
                await self._session(stop)
                delay = 0.1
            except (aiormq.exceptions.AMQPError, aio_pika.exceptions.AMQPException, ConnectionError, OSError,
                    TimeoutError) as exc:  # fmt: skip
                log.warning("consumer.broker_unavailable", error=type(exc).__name__, retry_in=round(delay, 2))
                await _sleep_or_stop(stop, delay)
                delay = min(delay * 2, self.config.max_reconnect_delay)

    async def _session(self, stop: asyncio.Event) -> None:
        connection = await aio_pika.connect(
            self.amqp_url,
            timeout=10,
            client_properties={"connection_name": f"{self.service}.worker"},
        )
        try:
            channel = await connection.channel(publisher_confirms=False)
            await topology.declare(channel, (self.queue,))
            raw = await channel.get_underlay_channel()
            await raw.basic_qos(prefetch_count=self.config.prefetch)
            state = _ChannelState(raw)
            consume = await raw.basic_consume(self.queue.name, self._receiver(state), no_ack=False)
            log.info("consumer.ready", queue=self.queue.name, prefetch=self.config.prefetch)
            if self.on_ready is not None:
                self.on_ready()
            stopping = asyncio.ensure_future(stop.wait())
            try:
                while not stop.is_set():
                    if raw.is_closed:
                        raise ConnectionError("channel closed")
                    batch = await self._next_batch(state, stopping)
                    if batch:
                        await self._process(state, batch, stop)
                if consume.consumer_tag is not None:
                    await raw.basic_cancel(consume.consumer_tag)
                # What was delivered before the cancel is ours: write it rather than hand it back.
                while state.buffer and not raw.is_closed:
                    await self._process(state, self._take(state), stop)
            finally:
                stopping.cancel()
        finally:
            if not connection.is_closed:
                await connection.close()

    def _receiver(self, state: _ChannelState) -> Callable[[DeliveredMessage], Coroutine[Any, Any, None]]:
        loop = asyncio.get_running_loop()
        limit = self.config.max_messages

        async def receive(message: DeliveredMessage) -> None:
            tag = message.delivery_tag
            if tag is None:
                return
            state.buffer.append(_Delivery(message, tag, loop.time()))
            state.arrived.set()
            if len(state.buffer) >= limit:
                state.full.set()

        return receive

    async def _next_batch(self, state: _ChannelState, stopping: asyncio.Future[Any]) -> list[_Delivery]:
        loop = asyncio.get_running_loop()
        while not state.buffer:
            state.arrived.clear()
            waiter = asyncio.ensure_future(state.arrived.wait())
            await asyncio.wait(
                (waiter, stopping, state.channel.closing), timeout=1.0, return_when=asyncio.FIRST_COMPLETED
            )
            waiter.cancel()
            if stopping.done() or state.channel.is_closed:
                return []
        deadline = state.buffer[0].received + self.config.max_wait
        while len(state.buffer) < self.config.max_messages and not stopping.done():
            remaining = deadline - loop.time()
            if state.channel.is_closed:
                break
            if remaining <= 0:
                break
            state.full.clear()
            waiter = asyncio.ensure_future(state.full.wait())
            await asyncio.wait(
                (waiter, stopping, state.channel.closing),
                timeout=remaining,
                return_when=asyncio.FIRST_COMPLETED,
            )
            waiter.cancel()
        return self._take(state)

    def _take(self, state: _ChannelState) -> list[_Delivery]:
        batch = state.buffer[: self.config.max_messages]
        del state.buffer[: self.config.max_messages]
        if len(state.buffer) < self.config.max_messages:
            state.full.clear()
        return batch

    def decode(self, message: DeliveredMessage) -> E:
        """The event a Celery protocol-2 message carries; :class:`InvalidMessage` when there is none."""
        headers = message.header.properties.headers or {}
        task = headers.get("task")
        if task != self.type_name:
            raise InvalidMessage(f"unexpected task {str(task)[:100]!r}")
        inner = event_json(message.body)
        if inner is not None:
            try:
                return self.event_cls.model_validate_json(inner)
            except ValidationError:
                pass  # not the usual shape after all: validate the whole body below
        try:
            return self._body.validate_json(message.body)[1].event
        except ValidationError as exc:
            raise InvalidMessage(f"{exc.error_count()} validation errors") from None

    async def _process(self, state: _ChannelState, batch: list[_Delivery], stop: asyncio.Event) -> None:
        raw = state.channel
        valid: list[tuple[_Delivery, E]] = []
        for delivery in batch:
            try:
                valid.append((delivery, self.decode(delivery.message)))
            except InvalidMessage as exc:
                self._outcomes["invalid"].inc()
                log.error(
                    "event.invalid",
                    event_id=str(delivery.message.header.properties.message_id or ""),
                    reason=str(exc),
                    dead_lettered=True,
                )
                await raw.basic_reject(delivery.tag, requeue=False)
        if not valid:
            return
        with self._batch_span(valid):
            await self._settle(raw, valid, stop, whole=True)

    async def _settle(
        self,
        raw: aiormq.abc.AbstractChannel,
        part: list[tuple[_Delivery, E]],
        stop: asyncio.Event,
        *,
        whole: bool,
    ) -> None:
        """Handle ``part`` and acknowledge, requeue or split it."""
        outcome = await self._handle(part, stop)
        if outcome == "ok":
            if whole:
                # Batches are taken in delivery order and handled one at a time, so every tag below the
                # last one is either in this batch or already settled: one frame acknowledges them all.
                await raw.basic_ack(part[-1][0].tag, multiple=True)
            else:
                for delivery, _ in part:
                    await raw.basic_ack(delivery.tag)
            self._outcomes["ok"].inc(len(part))
            self._log_handled(part)
        elif outcome == "requeue":
            for delivery, event in part:
                await raw.basic_nack(delivery.tag, requeue=True)
                log.warning("event.transient_failure_requeued", event_id=str(event.id))
            self._outcomes["requeued"].inc(len(part))
        elif len(part) == 1:
            delivery, event = part[0]
            log.error("event.refused_requeued", event_id=str(event.id), event_type=self.type_name)
            self._outcomes["poison"].inc()
            # Back to the queue: the delivery limit dead-letters it after a few more tries.
            await raw.basic_nack(delivery.tag, requeue=True)
        else:
            middle = len(part) // 2
            await self._settle(raw, part[:middle], stop, whole=False)
            await self._settle(raw, part[middle:], stop, whole=False)

    async def _handle(self, part: list[tuple[_Delivery, E]], stop: asyncio.Event) -> str:
        events = [event for _, event in part]
        self._size.observe(len(events))
        started = time.perf_counter()
        try:
            for attempt in range(self.config.transient_retries + 1):
                try:
                    await self.handler(events)
                    return "ok"
                except self.poison as exc:
                    log.warning("batch.refused", error=type(exc).__name__, events=len(events))
                    return "poison"
                except Exception as exc:  # noqa: BLE001 - anything else is retried, then requeued
                    if attempt == self.config.transient_retries or (stop.is_set() and attempt > 0):
                        log.warning("batch.requeued", error=type(exc).__name__, events=len(events))
                        return "requeue"
                    self._retries.inc()
                    delay = min(self.config.retry_backoff * 2**attempt, self.config.retry_backoff_max)
                    log.warning(
                        "batch.retrying", error=type(exc).__name__, attempt=attempt + 1, retry_in=delay
                    )
                    await asyncio.sleep(delay)
            return "requeue"
        finally:
            self._seconds.observe(time.perf_counter() - started)

    def _batch_span(self, part: list[tuple[_Delivery, E]]) -> Any:
        # One span per batch. A batch of one event continues that event's trace (the usual case when
        # traffic is light); a bigger one links to the trace of each event in it, as OpenTelemetry's
        # messaging conventions do for batch processing, and each event's log line carries its own id.
        parent = None
        links = []
        contexts = [
            _TRACE_PROPAGATOR.extract({"traceparent": event.traceparent})
            for _, event in part[:_MAX_LINKS]
            if event.traceparent
        ]
        if len(part) == 1 and contexts:
            parent = contexts[0]
        else:
            for ctx in contexts:
                span_context = trace.get_current_span(ctx).get_span_context()
                if span_context.is_valid:
                    links.append(Link(span_context))
        return tracer("parley.batch").start_as_current_span(
            f"{self.type_name} process",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                "messaging.batch.message_count": len(part),
                "messaging.destination.name": self.queue.name,
            },
        )

    def _log_handled(self, part: list[tuple[_Delivery, E]]) -> None:
        if len(part) > self.config.log_events_up_to:
            log.info("batch.handled", event_type=self.type_name, events=len(part))
            return
        for _, event in part:
            trace_id = (
                event.traceparent.split("-")[1]
                if event.traceparent and event.traceparent.count("-") == 3
                else None
            )
            log.info("event.handled", event_id=str(event.id), event_type=self.type_name, trace_id=trace_id)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass
