"""The notify Celery app (``parley-notify-worker``): events in, emails out, each at most once per event
in the sent log.

For one event: take a transaction-scoped advisory lock on its id (so two copies of the event never send
at once), skip it if the sent log has it, render, send (transient failures retried with backoff in place,
the message unacknowledged meanwhile), then write the sent-log row and commit. A crash after the SMTP
server accepted the message and before that commit sends it once more on redelivery, with the same
Message-ID; nothing is ever lost.

``user.deleted.v1`` sends one confirmation to the address in the event, then erases the user's address
and sent log and records the user in ``erased_users``, all in one transaction. Every handler takes a
per-user advisory lock before it reads or writes a user's address, so an erasure and an email for the same
user never interleave: an event for an erased user (a late quota email, a redelivered registration) is
skipped and logged, never sent, and never stores the address again.
"""

from __future__ import annotations

from functools import cache
from uuid import UUID

from celery.exceptions import Reject
from parley_common.db.engine import create_sync_db_engine
from parley_common.events import (
    EndpointDisabledV1,
    Event,
    PlanChangedV1,
    QuotaThresholdCrossedV1,
    UserDeletedV1,
    UserRegisteredV1,
)
from parley_common.logs import get_logger
from parley_common.messaging import topology
from parley_common.messaging.worker import create_celery_app, event_handler
from sqlalchemy import Connection, Engine, delete, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import InterfaceError, OperationalError

from parley_notify.config import get_settings
from parley_notify.emails import message_id, render
from parley_notify.mailer import Mailer, MailUnavailable, mailer_for, send_with_retries
from parley_notify.models import ErasedUser, Recipient, SentEmail

log = get_logger(__name__)

settings = get_settings()
app = create_celery_app("notify", topology.NOTIFY, settings)


class RecipientUnknown(Exception):
    """No ``user.registered.v1`` seen yet for this user; retried, then returned to the queue."""


TRANSIENT = (OperationalError, InterfaceError, RecipientUnknown)


@cache
def engine() -> Engine:
    return create_sync_db_engine(
        settings.database_url, application_name="notify.worker", pool_size=2, max_overflow=2
    )


@cache
def mailer() -> Mailer:
    # Per process (prefork children each build their own, after the fork).
    return mailer_for(settings)


def _lock_key(event_id: UUID) -> int:
    return (event_id.int >> 64) - (1 << 63)  # a signed 64-bit key for pg_advisory_xact_lock


# Users are locked in the two-key space of advisory locks, which never meets the one-key space of event
# locks. Two users sharing a 32-bit key only wait for each other.
_USER_LOCK_SPACE = 0x6E6F7469  # "noti"


def _lock_user(conn: Connection, user_id: UUID) -> None:
    """Serialise everything touching this user's address until the transaction ends."""
    key = (user_id.int & 0xFFFFFFFF) - (1 << 31)
    conn.execute(
        text("SELECT pg_advisory_xact_lock(CAST(:space AS integer), CAST(:key AS integer))"),
        {"space": _USER_LOCK_SPACE, "key": key},
    )


def _erased(conn: Connection, user_id: UUID) -> bool:
    return conn.scalar(select(ErasedUser.user_id).where(ErasedUser.user_id == user_id)) is not None


def send_for_event(event: Event, user_id: UUID, recipient: str | None) -> str:
    """Email ``event`` to its user once; returns what happened."""
    with engine().begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(event.id)})
        if conn.scalar(select(SentEmail.status).where(SentEmail.event_id == event.id)) is not None:
            log.info("mail.duplicate_ignored")
            return "duplicate"
        _lock_user(conn, user_id)  # after the event lock, always in that order
        if _erased(conn, user_id):
            log.info("mail.skipped_user_erased", user_id=str(user_id))
            return "user_erased"
        if recipient is None:
            recipient = conn.scalar(select(Recipient.email).where(Recipient.user_id == user_id))
            if recipient is None:
                raise RecipientUnknown(str(user_id))
        spec, message = render(event, recipient, settings)
        try:
            tries, error = send_with_retries(mailer(), message, str(event.id), settings.smtp_retry_delays)
        except MailUnavailable as exc:
            log.error("mail.unavailable_requeued", error=str(exc))
            raise Reject("mail server unavailable", requeue=True) from None
        status = "failed" if error else "sent"
        conn.execute(
            insert(SentEmail)
            .values(
                event_id=event.id,
                event_type=event.type,
                user_id=user_id,
                recipient=recipient,
                template=spec.template,
                message_id=message_id(event, settings),
                status=status,
                attempts=tries,
                error=error,
            )
            .on_conflict_do_nothing(index_elements=["event_id"])
        )
    if error:
        log.warning("mail.refused_permanently", template=spec.template, error=error, user_id=str(user_id))
    else:
        log.info("mail.sent", template=spec.template, tries=tries, user_id=str(user_id))
    return status


@event_handler(app, UserRegisteredV1, transient=TRANSIENT)
def on_user_registered(event: UserRegisteredV1) -> None:
    with engine().begin() as conn:
        _lock_user(conn, event.user_id)
        if _erased(conn, event.user_id):
            # A registration redelivered (or retried) after the deletion: no address, no welcome.
            log.info("mail.skipped_user_erased", user_id=str(event.user_id))
            return
        conn.execute(
            insert(Recipient)
            .values(user_id=event.user_id, email=str(event.email), registered_event_id=event.id)
            .on_conflict_do_update(
                index_elements=["user_id"],
                set_={"email": str(event.email), "registered_event_id": event.id, "created_at": func.now()},
            )
        )
    send_for_event(event, event.user_id, str(event.email))


@event_handler(app, QuotaThresholdCrossedV1, transient=TRANSIENT)
def on_quota_threshold(event: QuotaThresholdCrossedV1) -> None:
    send_for_event(event, event.user_id, None)


@event_handler(app, PlanChangedV1, transient=TRANSIENT)
def on_plan_changed(event: PlanChangedV1) -> None:
    send_for_event(event, event.user_id, None)


@event_handler(app, EndpointDisabledV1, transient=TRANSIENT)
def on_endpoint_disabled(event: EndpointDisabledV1) -> None:
    send_for_event(event, event.user_id, None)


@event_handler(app, UserDeletedV1, transient=TRANSIENT)
def on_user_deleted(event: UserDeletedV1) -> None:
    """One confirmation to the event's address, then the user's address and sent log erased, at once.

    The confirmation's Message-ID is the event's, like every email's. A redelivered event (or a second
    deletion event for the user) finds the user in ``erased_users`` and does nothing. As with every
    email, a crash between the SMTP server's acceptance and the commit sends it once more.
    """
    user_id = event.user_id
    with engine().begin() as conn:
        _lock_user(conn, user_id)
        if _erased(conn, user_id):
            log.info("mail.user_already_erased", user_id=str(user_id))
            return
        spec, message = render(event, str(event.email), settings)
        try:
            tries, error = send_with_retries(mailer(), message, str(event.id), settings.smtp_retry_delays)
        except MailUnavailable as exc:
            # Nothing is erased yet: the event comes back and the confirmation goes out first.
            log.error("mail.unavailable_requeued", error=str(exc))
            raise Reject("mail server unavailable", requeue=True) from None
        confirmation = "failed" if error else "sent"
        recipients = conn.execute(delete(Recipient).where(Recipient.user_id == user_id)).rowcount
        sent_log = conn.execute(delete(SentEmail).where(SentEmail.user_id == user_id)).rowcount
        conn.execute(
            insert(ErasedUser)
            .values(user_id=user_id, event_id=event.id, confirmation=confirmation)
            .on_conflict_do_nothing(index_elements=["user_id"])
        )
    if error:
        # Without the server's reply, which may quote the address.
        log.warning("mail.refused_permanently", template=spec.template, user_id=str(user_id))
    # Counts only: the address is not logged.
    log.info(
        "notify.user_erased",
        user_id=str(user_id),
        confirmation=confirmation,
        tries=tries,
        recipients=int(recipients or 0),
        sent_log=int(sent_log or 0),
    )
