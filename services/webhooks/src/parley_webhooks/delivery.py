"""The delivery state machine, on the worker side: fan out, dispatch what is due, attempt, reschedule.

- ``fan_out``: an event becomes one pending delivery per enabled endpoint of its user subscribed to its
  type (unique per endpoint and event id, so a redelivered event fans out once).
- ``claim_due`` (beat's periodic task): pending deliveries whose ``next_attempt_at`` has come are leased
  (``next_attempt_at`` pushed ``lease`` ahead) with a fresh ``dispatch_token`` and handed to workers. If a
  worker never reports back, the lease runs out and the delivery is claimed again.
- ``attempt``: only the holder of the current token may attempt, once: starting the attempt replaces the
  token and restarts the lease, in the transaction that writes the attempt row (an unfinished one found
  later is marked ``interrupted``). So a task message delivered twice makes one attempt, and an attempt
  whose worker died is made again when its lease runs out: at most one extra attempt, nothing lost.
- Outcomes: 2xx succeeds; 410 disables the endpoint; anything else (3xx included) is retried on the
  schedule with jitter, never sooner than a 429/503 ``Retry-After``; when the schedule runs out the
  delivery fails. An endpoint failing for ``disable_after`` without one success is disabled, and the
  ``webhooks.endpoint_disabled.v1`` event for its owner is written in the same transaction, once.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from parley_common.events import EndpointDisabledV1, Event
from parley_common.logs import get_logger
from sqlalchemy import Connection, Engine, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import OperationalError

from parley_webhooks import signing
from parley_webhooks.models import Attempt, Delivery, Endpoint, EndpointSecret, OutboxMessage
from parley_webhooks.secret_box import SecretBox
from parley_webhooks.sender import AttemptResult, Sender

log = get_logger(__name__)

TEST_EVENT_TYPE = "webhooks.test.v1"
FINISH_TRIES = 3


@dataclass(frozen=True)
class DeliveryPolicy:
    schedule: tuple[float, ...]
    jitter: float
    retry_after_max: float
    disable_after: float
    lease: float
    region: str | None = None

    def retry_delay(self, round_attempts: int, retry_after: float | None) -> float | None:
        """Seconds until the next attempt after ``round_attempts`` failed ones; None when retries ran out."""
        if round_attempts > len(self.schedule):
            return None
        delay = self.schedule[round_attempts - 1] * random.uniform(1 - self.jitter, 1 + self.jitter)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_after_max))
        return delay


# A delivery that will not be attempted again: finished, unscheduled, its dispatch token spent.
_FAILED = {"status": "failed", "finished_at": func.now(), "next_attempt_at": None, "dispatch_token": None}


def webhook_id(event_id: UUID) -> str:
    return f"msg_{event_id.hex}"


def outbound_body(event: Event) -> str:
    # The event as published, minus our own trace context, which means nothing to a receiver.
    return event.model_dump_json(exclude={"traceparent"})


def fan_out(engine: Engine, event: Event) -> int:
    """Create the deliveries of ``event``; returns how many were new."""
    user_id = getattr(event, "user_id", None)
    if user_id is None:
        return 0
    body = outbound_body(event)
    with engine.begin() as conn:
        endpoint_ids = conn.scalars(
            select(Endpoint.id)
            .where(
                Endpoint.user_id == user_id,
                Endpoint.enabled.is_(True),
                Endpoint.event_types.contains([event.type]),
            )
            .order_by(Endpoint.id)
            # Key-share locks: an erasure or deletion of these endpoints (FOR UPDATE) waits for this
            # fan-out and then removes its rows too, or goes first and this finds nothing.
            .with_for_update(read=True, key_share=True)
        ).all()
        if not endpoint_ids:
            return 0
        rows = [
            {
                "id": uuid.uuid4(),
                "endpoint_id": endpoint_id,
                "user_id": user_id,
                "event_id": event.id,
                "event_type": event.type,
                "webhook_id": webhook_id(event.id),
                "body": body,
            }
            for endpoint_id in endpoint_ids
        ]
        created = conn.scalars(
            pg_insert(Delivery)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["endpoint_id", "event_id"])
            .returning(Delivery.id)
        ).all()
        return len(created)


def claim_due(engine: Engine, batch: int, lease: float) -> list[tuple[UUID, UUID, datetime]]:
    """Lease up to ``batch`` due deliveries: (delivery id, dispatch token, when it was due)."""
    with engine.begin() as conn:
        rows = conn.execute(
            text(
                """
                WITH due AS (
                    SELECT id, next_attempt_at FROM webhooks.deliveries
                    WHERE status = 'pending' AND next_attempt_at <= now()
                    ORDER BY next_attempt_at
                    LIMIT :batch
                    FOR UPDATE SKIP LOCKED
                )
                UPDATE webhooks.deliveries AS d
                SET dispatch_token = gen_random_uuid(),
                    next_attempt_at = now() + make_interval(secs => :lease)
                FROM due WHERE d.id = due.id
                RETURNING d.id, d.dispatch_token, due.next_attempt_at
                """
            ),
            {"batch": batch, "lease": lease},
        ).all()
    return [(row[0], row[1], row[2]) for row in rows]


@dataclass(frozen=True)
class _Claimed:
    attempt_id: int
    token: UUID
    endpoint_id: UUID
    url: str
    webhook_id: str
    body: str
    secrets: list[str]


def attempt(
    engine: Engine,
    sender: Sender,
    policy: DeliveryPolicy,
    box: SecretBox,
    delivery_id: UUID,
    token: UUID,
    scheduled_at: datetime | None = None,
) -> str:
    """Make one attempt of a dispatched delivery; returns what happened (for logs and tests)."""
    claimed = _start(engine, box, delivery_id, token, scheduled_at, policy.lease)
    if isinstance(claimed, str):
        return claimed
    timestamp = int(time.time())
    headers = signing.headers(claimed.secrets, claimed.webhook_id, timestamp, claimed.body)
    result = sender.send(claimed.url, headers, claimed.body.encode())
    for tries in range(1, FINISH_TRIES + 1):
        try:
            outcome = _finish(engine, policy, delivery_id, claimed, result)
            break
        except OperationalError:
            # Deadlock victim or a dropped connection: the answer is in hand, record it again.
            if tries == FINISH_TRIES:
                raise
            time.sleep(0.05 * tries)
    log.info(
        "webhook.attempted",
        delivery_id=str(delivery_id),
        endpoint_id=str(claimed.endpoint_id),
        webhook_id=claimed.webhook_id,
        outcome=result.outcome,
        status_code=result.status_code,
        latency_ms=result.latency_ms,
        next=outcome,
    )
    return outcome


def _start(
    engine: Engine,
    box: SecretBox,
    delivery_id: UUID,
    token: UUID,
    scheduled_at: datetime | None,
    lease: float,
) -> _Claimed | str:
    with engine.begin() as conn:
        delivery = conn.execute(
            select(
                Delivery.status,
                Delivery.dispatch_token,
                Delivery.endpoint_id,
                Delivery.attempt_count,
                Delivery.webhook_id,
                Delivery.body,
                Endpoint.url,
                Endpoint.enabled,
            )
            .join(Endpoint, Endpoint.id == Delivery.endpoint_id)
            .where(Delivery.id == delivery_id)
            .with_for_update(of=Delivery)
        ).first()
        if delivery is None:
            return "gone"
        if delivery.status != "pending" or delivery.dispatch_token != token:
            return "stale"
        if not delivery.enabled:
            # Only this row (already locked): failing the endpoint's other rows here could deadlock with
            # a finishing attempt that holds the endpoint and wants this row.
            conn.execute(
                update(Delivery)
                .where(Delivery.id == delivery_id)
                .values(**_FAILED, last_error="the endpoint is disabled")
            )
            return "endpoint_disabled"
        conn.execute(
            update(Attempt)
            .where(
                Attempt.delivery_id == delivery_id,
                Attempt.finished_at.is_(None),
                # Older than a lease: its worker is gone. A younger one is still out (the delivery was
                # failed by a disable and replayed meanwhile) and will record its own result.
                Attempt.started_at <= func.now() - timedelta(seconds=lease),
            )
            .values(
                outcome="interrupted", finished_at=func.now(), error="the worker stopped during this attempt"
            )
        )
        attempt_token = uuid.uuid4()
        # Decrypted here, inside the transaction: a secret no configured key opens (SecretUnreadable)
        # rolls it back, and the delivery waits for its lease to be dispatched again, attempt-free.
        secrets = [
            box.open(stored)
            for stored in conn.scalars(
                select(EndpointSecret.secret)
                .where(
                    EndpointSecret.endpoint_id == delivery.endpoint_id,
                    (EndpointSecret.expires_at.is_(None)) | (EndpointSecret.expires_at > func.now()),
                )
                .order_by(EndpointSecret.created_at.desc(), EndpointSecret.id.desc())
            )
        ]
        attempt_id = conn.execute(
            insert(Attempt)
            .values(
                delivery_id=delivery_id,
                number=delivery.attempt_count + 1,
                scheduled_at=scheduled_at,
                started_at=func.now(),
            )
            .returning(Attempt.id)
        ).scalar_one()
        conn.execute(
            update(Delivery)
            .where(Delivery.id == delivery_id)
            .values(
                attempt_count=Delivery.attempt_count + 1,
                round_attempts=Delivery.round_attempts + 1,
                # The lease restarts with the attempt, so it always outlasts the request's timeout.
                next_attempt_at=func.now() + timedelta(seconds=lease),
                # The dispatch is used up: a second copy of the same task message (redelivered after a
                # lost connection or a crash) finds the token changed and does nothing; if this attempt
                # never finishes, the lease runs out and beat dispatches the delivery afresh.
                dispatch_token=attempt_token,
            )
        )
        return _Claimed(
            attempt_id,
            attempt_token,
            delivery.endpoint_id,
            delivery.url,
            delivery.webhook_id,
            delivery.body,
            secrets,
        )


def _finish(
    engine: Engine,
    policy: DeliveryPolicy,
    delivery_id: UUID,
    claimed: _Claimed,
    result: AttemptResult,
) -> str:
    stored = result.body.decode("utf-8", errors="replace")
    error = result.error
    if result.outcome == "failed" and error is None:
        error = f"HTTP {result.status_code}"
    with engine.begin() as conn:
        # Lock order: endpoint, then delivery rows (as _disable needs them), never the other way round.
        # An answer from a URL the owner has since replaced says nothing about the endpoint as it is now.
        same_url = (
            conn.scalar(select(Endpoint.url).where(Endpoint.id == claimed.endpoint_id).with_for_update())
            == claimed.url
        )
        conn.execute(
            update(Attempt)
            .where(Attempt.id == claimed.attempt_id)
            .values(
                finished_at=func.now(),
                outcome=result.outcome,
                status_code=result.status_code,
                latency_ms=result.latency_ms,
                address=result.address,
                error=error,
                response_body=stored,
                response_bytes=len(result.body),
                response_truncated=result.truncated,
            )
        )
        delivery = conn.execute(
            select(Delivery.status, Delivery.dispatch_token, Delivery.round_attempts)
            .where(Delivery.id == delivery_id)
            .with_for_update()
        ).first()
        if delivery is None:
            return "gone"  # the endpoint was deleted while the request was out
        common: dict[str, Any] = {"last_status_code": result.status_code, "last_error": error}
        if result.succeeded:
            conn.execute(
                update(Delivery)
                .where(Delivery.id == delivery_id)
                .values(
                    status="succeeded",
                    succeeded_at=func.now(),
                    finished_at=func.now(),
                    next_attempt_at=None,
                    dispatch_token=None,
                    **common,
                )
            )
            if same_url:
                conn.execute(
                    update(Endpoint)
                    .where(Endpoint.id == claimed.endpoint_id)
                    .values(failing_since=None, last_success_at=func.now())
                )
            return "succeeded"

        still_ours = delivery.status == "pending" and delivery.dispatch_token == claimed.token
        if result.status_code == 410 and same_url:
            conn.execute(update(Delivery).where(Delivery.id == delivery_id).values(**common))
            _disable(conn, claimed.endpoint_id, "gone", policy.region)
            return "endpoint_gone"
        outcome = "superseded"
        if still_ours:
            delay = policy.retry_delay(delivery.round_attempts, result.retry_after)
            if delay is None:
                conn.execute(update(Delivery).where(Delivery.id == delivery_id).values(**_FAILED, **common))
                outcome = "exhausted"
            else:
                conn.execute(
                    update(Delivery)
                    .where(Delivery.id == delivery_id)
                    .values(
                        next_attempt_at=func.now() + timedelta(seconds=delay), dispatch_token=None, **common
                    )
                )
                outcome = f"retry_in_{delay:.1f}s"
        if not same_url:
            return outcome
        endpoint = conn.execute(
            update(Endpoint)
            .where(Endpoint.id == claimed.endpoint_id)
            .values(failing_since=func.coalesce(Endpoint.failing_since, func.now()))
            .returning(Endpoint.failing_since, Endpoint.enabled, func.now())
        ).first()
        if endpoint is not None:
            since, enabled, now = endpoint
            if enabled and since is not None and now - since >= timedelta(seconds=policy.disable_after):
                _disable(conn, claimed.endpoint_id, "failing", policy.region)
                outcome = "endpoint_disabled"
        return outcome


def _fail_pending(conn: Connection, endpoint_id: UUID, reason: str) -> None:
    conn.execute(
        update(Delivery)
        .where(Delivery.endpoint_id == endpoint_id, Delivery.status == "pending")
        .values(**_FAILED, last_error=reason)
    )


def _disable(conn: Connection, endpoint_id: UUID, reason: str, region: str | None) -> bool:
    """Disable the endpoint unless it already is; the owner's event is written only by the one that did."""
    row = conn.execute(
        update(Endpoint)
        .where(Endpoint.id == endpoint_id, Endpoint.enabled.is_(True))
        .values(enabled=False, disabled_reason=reason, disabled_at=func.now())
        .returning(Endpoint.user_id, Endpoint.url)
    ).first()
    if row is None:
        return False
    user_id, url = row
    event = EndpointDisabledV1(
        source="webhooks",
        user_id=user_id,
        endpoint_id=endpoint_id,
        url=url,
        reason=reason,  # type: ignore[arg-type]
        subject=str(user_id),
        region=region,
    )
    conn.execute(
        insert(OutboxMessage).values(
            event_id=event.id, event_type=event.type, payload=event.model_dump(mode="json")
        )
    )
    _fail_pending(conn, endpoint_id, "the endpoint was disabled")
    log.warning(
        "webhook.endpoint_disabled", endpoint_id=str(endpoint_id), reason=reason, event_id=str(event.id)
    )
    return True
