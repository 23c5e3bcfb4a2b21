"""An endpoint that fails without a single success for the (compressed) disable period is disabled, and its
owner gets exactly one email, however many deliveries raced to disable it."""

from __future__ import annotations

import time
import uuid

import pytest
from parley_common.testing.processes import ProcessManager

from tests.notify.support import SmtpSink, start_smtp_sink
from tests.webhooks.events import message_completed, registered
from tests.webhooks.support import (
    Isolated,
    Receiver,
    Stack,
    attempts,
    deliveries,
    endpoint_row,
    new_endpoint,
    settled,
    start_stack,
    wait_for,
)

DISABLE_AFTER = 4.0


@pytest.fixture(scope="module")
def smtp(module_processes: ProcessManager) -> SmtpSink:
    return start_smtp_sink(module_processes)


@pytest.fixture(scope="module")
def stack(module_processes: ProcessManager, isolated: Isolated, smtp: SmtpSink) -> Stack:
    return start_stack(
        module_processes,
        isolated,
        {
            # Retries keep coming for longer than the disable period.
            "PARLEY_WEBHOOKS_RETRY_SCHEDULE": "0.5,0.5,1,1,1,1,1,1,1,1",
            "PARLEY_WEBHOOKS_RETRY_JITTER": "0.1",
            "PARLEY_WEBHOOKS_DISABLE_AFTER": str(DISABLE_AFTER),
            "PARLEY_WEBHOOKS_TIMEOUT": "3",
            "PARLEY_WEBHOOKS_CONNECT_TIMEOUT": "2",
            "PARLEY_WEBHOOKS_LEASE_SECONDS": "10",
            "PARLEY_WEBHOOKS_POLL_INTERVAL": "0.2",
            "PARLEY_WEBHOOKS_ALLOW_HTTP": "true",
            "PARLEY_WEBHOOKS_TEST_ALLOW_CIDRS": "127.0.0.1/32",
        },
        notify_env={**smtp.env(), "PARLEY_SMTP_RETRY_DELAYS": "0.2,0.5"},
    )


def test_permanent_500_disables_after_the_period_and_emails_the_owner_once(
    stack: Stack, receiver: Receiver, smtp: SmtpSink
) -> None:
    user = uuid.uuid4()
    welcome = registered(user)
    stack.publish([welcome])
    wait_for(lambda: smtp.to(str(welcome.email)), what="welcome email (recipient known to notify)")
    tag = uuid.uuid4().hex[:8]
    endpoint = new_endpoint(stack, user, receiver.url(f"/status/500/{tag}"))
    # Several deliveries fail at once, so several workers race to disable the endpoint.
    stack.publish([message_completed(user) for _ in range(4)])

    wait_for(lambda: not endpoint_row(stack, endpoint["id"])["enabled"], timeout=40, what="endpoint disabled")
    row = endpoint_row(stack, endpoint["id"])
    assert row["disabled_reason"] == "failing"
    first_failure = min(
        a["finished_at"]
        for d in deliveries(stack, endpoint["id"])
        for a in attempts(stack, d["id"])
        if a["finished_at"] is not None
    )
    assert (row["disabled_at"] - first_failure).total_seconds() >= DISABLE_AFTER - 0.5
    rows = wait_for(lambda: settled(stack, endpoint["id"], 4), what="deliveries settled")
    assert {r["status"] for r in rows} == {"failed"}

    outbox = stack.query(
        "SELECT event_id, published_at FROM webhooks.outbox "
        "WHERE event_type = 'webhooks.endpoint_disabled.v1' AND payload->>'endpoint_id' = :e",
        e=endpoint["id"],
    )
    assert len(outbox) == 1
    expected_id = f"<{outbox[0]['event_id']}@parley.local>"
    mails = wait_for(
        lambda: [m for m in smtp.to(str(welcome.email)) if m["subject"] == "A webhook endpoint was disabled"],
        what="the disabled-endpoint email",
    )
    # Let everything that could still produce a second email run out, then count again.
    wait_for(
        lambda: stack.query("SELECT 1 FROM webhooks.outbox WHERE published_at IS NULL") == [],
        what="outbox drained",
    )
    time.sleep(2)
    mails = [m for m in smtp.to(str(welcome.email)) if m["subject"] == "A webhook endpoint was disabled"]
    assert [m["message_id"] for m in mails] == [expected_id]
    assert endpoint["url"] in mails[0]["raw"]
