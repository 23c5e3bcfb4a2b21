"""kill -9 of the delivery worker while its requests are in flight: every event is still delivered, with
at most one extra attempt each (the interrupted one is recorded as such)."""

from __future__ import annotations

import uuid
from collections import defaultdict

import pytest
from parley_common.testing.processes import ProcessManager
from standardwebhooks import Webhook

from tests.webhooks.events import message_completed
from tests.webhooks.support import Isolated, Receiver, Stack, restart, start_stack, wait_for

pytestmark = pytest.mark.chaos


@pytest.fixture(scope="module")
def stack(module_processes: ProcessManager, isolated: Isolated) -> Stack:
    return start_stack(
        module_processes,
        isolated,
        {
            "PARLEY_WEBHOOKS_ALLOW_HTTP": "true",
            "PARLEY_WEBHOOKS_TEST_ALLOW_CIDRS": "127.0.0.1/32",
            "PARLEY_WEBHOOKS_RETRY_SCHEDULE": "1,1,1",
            "PARLEY_WEBHOOKS_POLL_INTERVAL": "0.2",
            "PARLEY_WEBHOOKS_TIMEOUT": "4",
            "PARLEY_WEBHOOKS_CONNECT_TIMEOUT": "1",
            "PARLEY_WEBHOOKS_LEASE_SECONDS": "6",
        },
    )


def test_kill_9_mid_request_still_delivers_with_at_most_one_extra_attempt(
    stack: Stack, receiver: Receiver
) -> None:
    user = uuid.uuid4()
    tag = uuid.uuid4().hex[:8]
    path = f"/slow/5/1/{tag}"  # the first request of each event hangs for 5 s
    with stack.client(user) as client:
        endpoint = client.post(
            "/endpoints",
            json={"url": receiver.url(path), "event_types": ["conversation.message_completed.v1"]},
        ).json()
    events = [message_completed(user) for _ in range(3)]
    stack.publish(events)
    wait_for(lambda: len(receiver.requests(path)) == 3, what="three requests in flight")

    worker = stack.processes["worker"]
    worker.kill9()
    assert not worker.alive()
    restart(worker)

    def all_succeeded() -> list[dict]:
        rows = stack.query("SELECT * FROM webhooks.deliveries WHERE endpoint_id = :e", e=endpoint["id"])
        return rows if len(rows) == 3 and all(r["status"] == "succeeded" for r in rows) else []

    rows = wait_for(all_succeeded, timeout=60, what="every event delivered after the crash")
    by_id: dict[str, list[dict]] = defaultdict(list)
    for request in receiver.requests(path):
        by_id[request["headers"]["webhook-id"]].append(request)
    assert set(by_id) == {f"msg_{e.id.hex}" for e in events}
    for webhook_id, received in by_id.items():
        assert len(received) == 2, webhook_id  # the interrupted request and one retry, no more
        Webhook(endpoint["secret"]).verify(received[-1]["body"], received[-1]["headers"])
    for row in rows:
        assert row["attempt_count"] == 2
        outcomes = [
            a["outcome"]
            for a in stack.query(
                "SELECT outcome FROM webhooks.attempts WHERE delivery_id = :d ORDER BY number", d=row["id"]
            )
        ]
        assert outcomes == ["interrupted", "succeeded"]
