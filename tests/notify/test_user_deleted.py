"""``user.deleted.v1`` in notify: one confirmation to the address in the event, however often the event
comes, then the stored address and sent log erased; later events for that user (a late quota email, a
redelivered registration) are skipped and logged, never sent, never dead-lettered, and never store the
address again. The notify worker and the SMTP sink are real processes, the events real RabbitMQ messages."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import time
import uuid
from typing import Any

import pytest
from parley_common.events import Event
from parley_common.testing import rabbitmq
from parley_common.testing.processes import ManagedProcess, ProcessManager

from tests.notify.support import SmtpSink, start_smtp_sink
from tests.support.db import query
from tests.webhooks.events import deleted, plan_changed, quota_crossed, registered
from tests.webhooks.support import Identity, Isolated, base_env, publish, start_notify, wait_for

SUBJECT = "Your Parley account was deleted"


@pytest.fixture(scope="module")
def smtp(module_processes: ProcessManager) -> SmtpSink:
    return start_smtp_sink(module_processes)


@pytest.fixture(scope="module")
def notify(module_processes: ProcessManager, isolated: Isolated, smtp: SmtpSink) -> ManagedProcess:
    env = base_env(
        isolated,
        Identity.new(),
        **smtp.env(),
        PARLEY_SMTP_RETRY_DELAYS="0.2,0.4",
        PARLEY_TRANSIENT_RETRIES="1",
    )
    return start_notify(module_processes, env)


def send(isolated: Isolated, *events: Event) -> None:
    publish(isolated.amqp_url, list(events))


def stored(isolated: Isolated, user: uuid.UUID) -> dict[str, list[dict[str, Any]]]:
    """What notify keeps of ``user``, by table."""
    return {
        table: query(isolated.database_url, f"SELECT * FROM notify.{table} WHERE user_id = :u", u=user)
        for table in ("recipients", "sent_emails", "erased_users")
    }


def logged(notify: ManagedProcess, event: str, user: uuid.UUID) -> list[dict[str, Any]]:
    return [r for r in notify.json_lines() if r.get("event") == event and r.get("user_id") == str(user)]


def dead_lettered(isolated: Isolated) -> list[Any]:
    return asyncio.run(rabbitmq.drain(isolated.amqp_url, "notify.events.dlq"))


def wait_for_marker(isolated: Isolated, smtp: SmtpSink) -> None:
    """A welcome to a fresh user, published last: once it is out, everything before it was handled
    (one worker process, one message at a time)."""
    marker = registered(uuid.uuid4())
    send(isolated, marker)
    wait_for(lambda: smtp.to(str(marker.email)), what="the marker email")


def test_the_confirmation_goes_out_once_and_the_address_is_erased(
    isolated: Isolated, smtp: SmtpSink, notify: ManagedProcess
) -> None:
    user = uuid.uuid4()
    welcome = registered(user)
    send(isolated, welcome, quota_crossed(user))
    wait_for(lambda: len(smtp.to(str(welcome.email))) == 2, what="welcome and quota emails")
    assert len(stored(isolated, user)["sent_emails"]) == 2

    event = deleted(user, email=str(welcome.email))
    send(isolated, event, event)  # the same event delivered twice
    wait_for(lambda: len(logged(notify, "mail.user_already_erased", user)) == 1, what="the second copy")
    wait_for_marker(isolated, smtp)

    confirmations = [m for m in smtp.to(str(event.email)) if m["subject"] == SUBJECT]
    [mail] = confirmations
    assert mail["message_id"] == f"<{event.id}@parley.local>"
    message = email.message_from_string(mail["raw"], policy=email.policy.default)
    assert message["To"] == str(event.email)
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None
    assert html is not None
    assert "has been deleted" in text.get_content()
    assert str(event.email) in text.get_content()
    assert "because your Parley account was deleted" in html.get_content()

    held = stored(isolated, user)
    assert held["recipients"] == []
    assert held["sent_emails"] == []
    [erased] = held["erased_users"]
    assert (erased["event_id"], erased["confirmation"]) == (event.id, "sent")
    [line] = logged(notify, "notify.user_erased", user)
    assert {k: line[k] for k in ("confirmation", "recipients", "sent_log")} == {
        "confirmation": "sent",
        "recipients": 1,
        "sent_log": 2,
    }
    # The address is in no log line of the worker.
    assert str(event.email) not in notify.text()
    assert dead_lettered(isolated) == []


def test_later_events_for_an_erased_user_are_skipped_not_sent_and_not_requeued(
    isolated: Isolated, smtp: SmtpSink, notify: ManagedProcess
) -> None:
    user = uuid.uuid4()
    welcome = registered(user)
    send(isolated, welcome)
    wait_for(lambda: smtp.to(str(welcome.email)), what="welcome email")
    send(isolated, deleted(user, email=str(welcome.email)))
    wait_for(lambda: logged(notify, "notify.user_erased", user), what="the erasure")
    received = len(smtp.to(str(welcome.email)))

    # A late quota email, a plan change, and the registration redelivered.
    late = [quota_crossed(user, 100), plan_changed(user), welcome]
    send(isolated, *late)
    wait_for(lambda: len(logged(notify, "mail.skipped_user_erased", user)) == 3, what="three skips")
    wait_for_marker(isolated, smtp)
    time.sleep(1)  # anything requeued would be back by now

    assert len(smtp.to(str(welcome.email))) == received
    skipped = {r["event_id"] for r in logged(notify, "mail.skipped_user_erased", user)}
    assert skipped == {str(e.id) for e in late}
    assert len(logged(notify, "mail.skipped_user_erased", user)) == 3  # each handled once, no loop
    requeued = [
        r
        for r in notify.json_lines()
        if r.get("event") == "event.transient_failure_requeued" and r.get("event_id") in skipped
    ]
    assert requeued == []
    held = stored(isolated, user)
    assert (held["recipients"], held["sent_emails"], len(held["erased_users"])) == ([], [], 1)
    assert dead_lettered(isolated) == []


def test_a_user_notify_never_saw_still_gets_the_confirmation_and_a_late_registration_is_ignored(
    isolated: Isolated, smtp: SmtpSink, notify: ManagedProcess
) -> None:
    user = uuid.uuid4()
    event = deleted(user)
    send(isolated, event)
    [mail] = wait_for(lambda: smtp.to(str(event.email)), what="the confirmation")
    assert (mail["subject"], mail["message_id"]) == (SUBJECT, f"<{event.id}@parley.local>")

    # Its registration arrives after the deletion (it was stuck in a retry): no welcome, no address.
    send(isolated, registered(user, email=str(event.email)))
    wait_for(lambda: logged(notify, "mail.skipped_user_erased", user), what="the registration skipped")
    wait_for_marker(isolated, smtp)
    assert len(smtp.to(str(event.email))) == 1
    held = stored(isolated, user)
    assert (held["recipients"], held["sent_emails"]) == ([], [])


def test_a_refused_confirmation_is_recorded_and_the_user_still_erased(
    isolated: Isolated, smtp: SmtpSink, notify: ManagedProcess
) -> None:
    user = uuid.uuid4()
    address = f"reject-{uuid.uuid4().hex[:8]}@example.com"
    send(isolated, registered(user, email=address))
    wait_for(lambda: stored(isolated, user)["sent_emails"], what="the refused welcome recorded")
    send(isolated, deleted(user, email=address))
    [line] = wait_for(lambda: logged(notify, "notify.user_erased", user), what="the erasure")
    assert line["confirmation"] == "failed"
    held = stored(isolated, user)
    assert (held["recipients"], held["sent_emails"]) == ([], [])
    assert [r["confirmation"] for r in held["erased_users"]] == ["failed"]
    assert smtp.to(address) == []
    assert json.dumps(line).find(address) == -1
