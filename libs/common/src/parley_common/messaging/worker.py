"""Celery, configured the one way every Parley worker runs.

- Queues come from :mod:`parley_common.messaging.topology` (quorum, delivery limit, dead-letter queue).
- ``acks_late`` + ``reject_on_worker_lost`` + prefetch 1: a message is acknowledged only after its
  handler committed; a killed child or worker returns it to the queue.
- A handler that raises is rejected without requeue, which RabbitMQ dead-letters (Celery's default would
  ack and drop it). Transient errors are retried in place with backoff, then returned to the queue, where
  the delivery limit bounds how often.
- Messages Celery cannot decode, or whose task it does not know, are rejected to the dead-letter queue too
  (Celery's consumer acks and drops undecodable ones).
- Each event runs in a span whose parent is the envelope's trace context, with the event id bound to
  every log line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Celery, Task, signals
from celery.exceptions import Reject
from celery.worker.consumer import Consumer
from kombu.entity import Exchange, Queue, binding
from pydantic import ValidationError

from parley_common.events import Event
from parley_common.health import HealthServer
from parley_common.logs import bind_context, clear_context, get_logger
from parley_common.messaging import topology
from parley_common.messaging.worker_settings import WorkerSettings
from parley_common.metrics import EVENTS_HANDLED
from parley_common.telemetry import span_from_carrier

log = get_logger("parley.worker")

__all__ = [
    "RejectingConsumer",
    "WorkerSettings",  # defined in worker_settings (no Celery there), imported from here by Celery workers
    "create_celery_app",
    "event_handler",
    "kombu_queues",
    "run_worker",
    "watch_worker_health",
]

E = TypeVar("E", bound=Event)


class RejectingConsumer(Consumer):  # type: ignore[misc]
    """Dead-letters messages Celery can't decode instead of acknowledging them away."""

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        log.error("worker.undecodable_message", error=type(exc).__name__, content_type=message.content_type)
        message.reject(requeue=False)


def kombu_queues(queue: topology.ConsumerQueue) -> list[Queue]:
    exchange = Exchange(topology.EXCHANGE, type="topic", durable=True)
    return [
        Queue(
            queue.name,
            bindings=[binding(exchange, routing_key=event_type) for event_type in queue.event_types],
            queue_arguments=queue.arguments(),
            durable=True,
        )
    ]


def _declare_dead_letter_side(app: Celery, queue: topology.ConsumerQueue) -> None:
    dlx = Exchange(topology.DEAD_LETTER_EXCHANGE, type="direct", durable=True)
    dlq = Queue(
        queue.dead_letter_queue,
        exchange=dlx,
        routing_key=queue.name,
        queue_arguments=topology.ConsumerQueue.dead_letter_arguments(),
        durable=True,
    )
    with app.connection_for_write() as conn:
        dlq.bind(conn.default_channel).declare()


def create_celery_app(service: str, queue: topology.ConsumerQueue, settings: WorkerSettings) -> Celery:
    """A Celery app consuming ``queue`` with Parley's reliability settings."""
    app = Celery(f"parley-{service}", broker=settings.rabbitmq_url.get_secret_value(), set_as_current=False)
    app.conf.update(
        task_queues=kombu_queues(queue),
        task_default_queue=queue.name,
        task_create_missing_queues=False,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure=False,
        task_acks_on_timeout=False,
        task_time_limit=settings.task_time_limit,
        task_soft_time_limit=max(settings.task_time_limit - 10, 1),
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        worker_prefetch_multiplier=1,
        worker_concurrency=settings.worker_concurrency,
        worker_consumer="parley_common.messaging.worker:RejectingConsumer",
        worker_hijack_root_logger=False,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_detect_quorum_queues=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"confirm_publish": True},
    )
    app.conf.parley_queue = queue
    app.conf.parley_service = service
    app.conf.parley_transient_retries = settings.transient_retries

    @signals.worker_init.connect(weak=False)
    def _declare(**_: Any) -> None:
        _declare_dead_letter_side(app, queue)

    return app


def event_handler(
    app: Celery,
    event_cls: type[E],
    *,
    transient: tuple[type[BaseException], ...] = (),
    name: str | None = None,
) -> Callable[[Callable[[E], None]], Task]:
    """Register ``fn(event)`` as the Celery task named after ``event_cls``'s type.

    ``fn`` must be idempotent on ``event.id``: delivery is at least once. Exceptions in ``transient``
    (lost database connections, deadlocks) are retried in place with backoff, then the message goes back
    to the queue; anything else, and an invalid payload, dead-letters the message at once.
    """
    type_name = name or event_cls.model_fields["type"].default
    service = app.conf.parley_service
    retries: int = app.conf.parley_transient_retries

    def decorate(fn: Callable[[E], None]) -> Task:
        @app.task(name=type_name, bind=True)  # type: ignore[untyped-decorator]
        def run(self: Task, event: dict[str, Any]) -> None:
            clear_context()
            carrier = {
                "traceparent": getattr(self.request, "traceparent", None) or event.get("traceparent") or ""
            }
            with span_from_carrier(
                f"{type_name} process", carrier, attributes={"messaging.message.id": str(self.request.id)}
            ):
                bind_context(
                    event_id=str(event.get("id")),
                    event_type=type_name,
                    delivery=self.request.delivery_info.get("redelivered"),
                )
                try:
                    parsed = event_cls.model_validate(event)
                except ValidationError as exc:
                    log.error("event.invalid", errors=exc.error_count())
                    EVENTS_HANDLED.labels(service, type_name, "invalid").inc()
                    raise Reject("invalid event payload", requeue=False) from None
                for attempt in range(retries + 1):
                    try:
                        fn(parsed)
                        break
                    except transient as exc:
                        if attempt == retries:
                            log.warning("event.transient_failure_requeued", error=type(exc).__name__)
                            EVENTS_HANDLED.labels(service, type_name, "requeued").inc()
                            raise Reject("transient failure", requeue=True) from None
                        time.sleep(min(0.05 * 2**attempt, 2.0))
                    except Exception:
                        EVENTS_HANDLED.labels(service, type_name, "failed").inc()
                        log.exception("event.failed")
                        raise
                EVENTS_HANDLED.labels(service, type_name, "ok").inc()
                log.info("event.handled")

        return run

    return decorate


def watch_worker_health(app: Celery, settings: WorkerSettings, health: HealthServer) -> None:
    """Ready once the consumer is connected to the broker; not ready again from warm shutdown on.

    Readiness also covers the database and Redis that ``settings`` configures (see
    :func:`parley_common.health.settings_checks`).
    """
    from parley_common.health import settings_checks

    for name, check in settings_checks(settings, name=f"{app.conf.parley_service}.worker").items():
        health.add_check(name, check)

    @signals.worker_ready.connect(weak=False)
    def _ready(sender: Any = None, **_: Any) -> None:
        consumer = sender
        health.add_check(
            "broker", lambda: bool(consumer.connection is not None and consumer.connection.connected)
        )
        health.set_started()

    @signals.worker_shutting_down.connect(weak=False)
    def _stopping(**_: Any) -> None:
        health.set_started(False)


def run_worker(app: Celery, settings: WorkerSettings, *, extra_args: list[str] | None = None) -> None:
    """Start the worker (``parley-<service>-worker``): logging, tracing and metrics first, then Celery.

    Prefork children are forked from this process and inherit its logging; when ``metrics_port`` is set,
    the caller must have set ``PROMETHEUS_MULTIPROC_DIR`` before anything imported prometheus_client.
    """
    import os
    import socket

    from parley_common.health import serve_health
    from parley_common.process import init_process

    service: str = app.conf.parley_service
    queue: topology.ConsumerQueue = app.conf.parley_queue
    init_process(service, "worker", settings)

    @signals.setup_logging.connect(weak=False)
    def _keep_our_logging(**_: Any) -> None:
        """Connected so Celery does not install its own handlers over ours."""

    if settings.metrics_port:
        # /metrics plus /livez and /readyz for the Helm probes (the worker has no HTTP server of its own).
        watch_worker_health(app, settings, serve_health(settings.metrics_port))
    node = f"{service}-{os.getpid()}@{socket.gethostname()}"
    app.worker_main(
        [
            "--quiet",  # no ASCII-art banner: every line on stdout is JSON
            "worker",
            "--loglevel",
            settings.log_level,
            "--hostname",
            node,
            "--queues",
            queue.name,
            "--concurrency",
            str(settings.worker_concurrency),
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            *(extra_args or []),
        ]
    )
