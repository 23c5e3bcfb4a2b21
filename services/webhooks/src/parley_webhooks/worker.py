"""The webhooks Celery app (``parley-webhooks-worker`` and ``parley-webhooks-beat``).

One queue, ``webhooks.events``: the public events endpoints subscribe to (each fans out into delivery
rows), ``user.deleted.v1`` (the account's endpoints and everything hanging off them are erased: see
``parley_webhooks.erasure``), plus two internal tasks sent straight to the queue:
``webhooks.dispatch_due``, which beat sends every ``webhooks_poll_interval`` seconds, and
``webhooks.deliver``, one per leased delivery. Retries are never Celery countdowns: a failed attempt only
moves the row's ``next_attempt_at``.
"""

from __future__ import annotations

from datetime import datetime
from functools import cache
from uuid import UUID

from parley_common.db.engine import create_sync_db_engine
from parley_common.events import EVENT_TYPES, Event, UserDeletedV1
from parley_common.logs import get_logger
from parley_common.messaging import topology
from parley_common.messaging.worker import create_celery_app, event_handler
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from parley_webhooks import delivery, erasure
from parley_webhooks.config import Settings, get_settings
from parley_webhooks.schemas import PUBLIC_EVENT_TYPES
from parley_webhooks.secret_box import SecretBox, SecretUnreadable
from parley_webhooks.sender import Sender

log = get_logger(__name__)

DISPATCH_TASK = "webhooks.dispatch_due"
DELIVER_TASK = "webhooks.deliver"

settings = get_settings()
app = create_celery_app("webhooks", topology.WEBHOOKS, settings)
app.conf.update(
    beat_scheduler="celery.beat:Scheduler",  # in memory: the schedule is one fixed interval, nothing to keep
    beat_max_loop_interval=max(settings.webhooks_poll_interval, 0.1),
    beat_schedule={
        DISPATCH_TASK: {
            "task": DISPATCH_TASK,
            "schedule": settings.webhooks_poll_interval,
            # Polls that waited in the queue (workers down) are dropped, not run in a burst later.
            "options": {"expires": max(settings.webhooks_poll_interval * 5, 5.0)},
        }
    },
)


def delivery_policy(settings: Settings) -> delivery.DeliveryPolicy:
    return delivery.DeliveryPolicy(
        schedule=tuple(settings.webhooks_retry_schedule),
        jitter=settings.webhooks_retry_jitter,
        retry_after_max=settings.webhooks_retry_after_max,
        disable_after=settings.webhooks_disable_after,
        lease=settings.webhooks_lease_seconds,
        region=settings.region,
    )


@cache
def engine() -> Engine:
    # Created lazily in the process that uses it; one connection per delivery thread plus the poll.
    return create_sync_db_engine(
        settings.database_url,
        application_name="webhooks.worker",
        pool_size=settings.worker_concurrency + 1,
        max_overflow=2,
    )


@cache
def secret_box() -> SecretBox:
    return SecretBox(settings.webhooks_encryption_keys.get_secret_value())


@cache
def sender() -> Sender:
    return Sender(
        settings.url_policy(),
        timeout=settings.webhooks_timeout,
        connect_timeout=settings.webhooks_connect_timeout,
        response_cap=settings.webhooks_response_cap_bytes,
        ca_file=settings.webhooks_tls_ca_file,
    )


def on_public_event(event: Event) -> None:
    created = delivery.fan_out(engine(), event)
    log.info("webhook.fanned_out", deliveries=created, user_id=str(getattr(event, "user_id", "")))


for _event_type in PUBLIC_EVENT_TYPES:
    event_handler(app, EVENT_TYPES[_event_type], transient=(OperationalError, InterfaceError))(
        on_public_event
    )


@event_handler(app, UserDeletedV1, transient=(OperationalError, InterfaceError))
def on_user_deleted(event: UserDeletedV1) -> None:
    """Erase the account's endpoints, deliveries and billing rows; a second copy erases nothing more."""
    erased = erasure.erase_user(
        engine(),
        event.user_id,
        # One attempt's whole budget (connect included), plus time to record its answer.
        settle_timeout=settings.webhooks_timeout + 5.0,
        lease=settings.webhooks_lease_seconds,
    )
    if not erased.settled:
        log.warning("webhook.erasure_in_flight_unsettled", user_id=str(event.user_id))
    # Counts only: the event's email address is not logged.
    log.info("webhook.user_erased", user_id=str(event.user_id), **erased.log_fields())


@app.task(name=DISPATCH_TASK, ignore_result=True)  # type: ignore[untyped-decorator]
def dispatch_due() -> int:
    try:
        claimed = delivery.claim_due(
            engine(), settings.webhooks_dispatch_batch, settings.webhooks_lease_seconds
        )
    except DBAPIError as exc:
        log.warning("webhook.dispatch_failed", error=type(exc).__name__)  # the next poll tries again
        return 0
    for delivery_id, token, due_at in claimed:
        app.send_task(
            DELIVER_TASK,
            kwargs={"delivery_id": str(delivery_id), "token": str(token), "scheduled_at": due_at.isoformat()},
        )
    if claimed:
        log.info("webhook.dispatched", count=len(claimed))
    return len(claimed)


@app.task(name=DELIVER_TASK, ignore_result=True)  # type: ignore[untyped-decorator]
def deliver(delivery_id: str, token: str, scheduled_at: str | None = None) -> str:
    try:
        return delivery.attempt(
            engine(),
            sender(),
            delivery_policy(settings),
            secret_box(),
            UUID(delivery_id),
            UUID(token),
            datetime.fromisoformat(scheduled_at) if scheduled_at else None,
        )
    except DBAPIError as exc:
        # The lease runs out and beat hands the delivery out again; nothing is lost.
        log.warning("webhook.attempt_not_recorded", delivery_id=delivery_id, error=type(exc).__name__)
        return "database_error"
    except SecretUnreadable as exc:
        # A configuration error (a key removed too early): nothing is sent, and the delivery is
        # dispatched again after its lease, so it goes out once the key is back.
        log.error("webhook.secret_unreadable", delivery_id=delivery_id, error=str(exc))
        return "secret_unreadable"
