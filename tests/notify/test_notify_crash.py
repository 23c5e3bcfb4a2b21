"""1,000 email events to a real SMTP server while the notify worker is killed with SIGKILL three times:
none is lost, at most one is sent twice per kill, and every Message-ID is the one its event id gives."""

from __future__ import annotations

import uuid

import pytest
from parley_common.testing.processes import ManagedProcess, ProcessManager

from tests.notify.support import SmtpSink, start_smtp_sink
from tests.support.db import query
from tests.webhooks.events import registered
from tests.webhooks.support import Identity, Isolated, base_env, publish, restart, start_notify, wait_for

pytestmark = pytest.mark.chaos

EVENTS = 1000
KILL_AT = (200, 450, 700)  # emails received before each kill


@pytest.fixture(scope="module")
def smtp(module_processes: ProcessManager) -> SmtpSink:
    return start_smtp_sink(module_processes)


@pytest.fixture(scope="module")
def notify(module_processes: ProcessManager, isolated: Isolated, smtp: SmtpSink) -> ManagedProcess:
    return start_notify(module_processes, base_env(isolated, Identity.new(), **smtp.env()))


def test_1000_emails_survive_three_kill_9s(
    isolated: Isolated, smtp: SmtpSink, notify: ManagedProcess
) -> None:
    events = [registered(uuid.uuid4()) for _ in range(EVENTS)]
    publish(isolated.amqp_url, events)
    for threshold in KILL_AT:
        wait_for(lambda t=threshold: len(smtp.messages()) >= t, timeout=120, what=f"{threshold} emails")
        notify.kill9()
        assert not notify.alive()
        restart(notify)

    expected = {f"<{e.id}@parley.local>" for e in events}

    def all_received() -> dict[str, int] | None:
        counts = smtp.by_message_id()
        return counts if set(counts) >= expected else None

    counts = wait_for(all_received, timeout=180, interval=0.5, what="every email")
    assert set(counts) == expected  # none lost, and nothing but these
    duplicates = sum(n - 1 for n in counts.values())
    assert duplicates <= len(KILL_AT)
    by_recipient = {str(e.email): f"<{e.id}@parley.local>" for e in events}
    for message in smtp.messages():
        assert by_recipient[message["to"][0]] == message["message_id"]
    rows = query(
        isolated.database_url, "SELECT status, count(*) AS n FROM notify.sent_emails GROUP BY status"
    )
    assert rows == [{"status": "sent", "n": EVENTS}]
