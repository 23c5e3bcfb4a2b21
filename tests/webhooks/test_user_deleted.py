"""``user.deleted.v1``: the worker erases the user's endpoints with everything hanging off them (secrets,
deliveries, attempts, pending retries), the plan billing gave them and their outbox rows, and redacts the
inbound billing events naming them. Nothing reaches the user's receivers afterwards, an attempt already
in flight is waited for, a redelivered event changes nothing, and other users are untouched. The worker,
beat, relay, API and receiver are real processes."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest
from parley_common.testing import rabbitmq
from parley_common.testing.processes import ProcessManager

from tests.webhooks.events import deleted, message_completed
from tests.webhooks.support import Isolated, Receiver, Stack, deliveries, new_endpoint, start_stack, wait_for
from tests.webhooks.test_inbound_billing import SECRET, post, signed, subscription_event

RETRY = 2.0  # every retry of a failing delivery comes this long (± 10 %) after the last attempt
SLOW = 2.0  # how long the slow receiver holds its first request


@pytest.fixture(scope="module")
def stack(module_processes: ProcessManager, isolated: Isolated) -> Stack:
    return start_stack(
        module_processes,
        isolated,
        {
            "PARLEY_WEBHOOKS_RETRY_SCHEDULE": ",".join([str(RETRY)] * 8),
            "PARLEY_WEBHOOKS_RETRY_JITTER": "0.1",
            "PARLEY_WEBHOOKS_TIMEOUT": "4",
            "PARLEY_WEBHOOKS_CONNECT_TIMEOUT": "1",
            "PARLEY_WEBHOOKS_LEASE_SECONDS": "10",
            "PARLEY_WEBHOOKS_POLL_INTERVAL": "0.2",
            "PARLEY_WEBHOOKS_ALLOW_HTTP": "true",
            "PARLEY_WEBHOOKS_TEST_ALLOW_CIDRS": "127.0.0.1/32",
            "PARLEY_BILLING_WEBHOOK_SECRET": SECRET,
            "PARLEY_BILLING_PRICE_PLANS": json.dumps({"price_pro": "pro"}),
        },
    )


def held(stack: Stack, user: uuid.UUID, endpoint_ids: list[str]) -> dict[str, int]:
    """Every row webhooks holds of ``user``, by table."""
    row = stack.query(
        """
        SELECT
          (SELECT count(*) FROM webhooks.endpoints WHERE user_id = :u) AS endpoints,
          (SELECT count(*) FROM webhooks.endpoint_secrets WHERE endpoint_id::text = ANY(:ids)) AS secrets,
          (SELECT count(*) FROM webhooks.deliveries WHERE user_id = :u OR endpoint_id::text = ANY(:ids))
            AS deliveries,
          (SELECT count(*) FROM webhooks.attempts a JOIN webhooks.deliveries d ON d.id = a.delivery_id
            WHERE d.user_id = :u OR d.endpoint_id::text = ANY(:ids)) AS attempts,
          (SELECT count(*) FROM webhooks.billing_plans WHERE user_id = :u) AS billing_plans,
          (SELECT count(*) FROM webhooks.inbound_events WHERE user_id = :u
            OR payload::text LIKE '%' || :s || '%') AS inbound_events,
          (SELECT count(*) FROM webhooks.outbox WHERE payload->>'user_id' = :s) AS outbox
        """,
        u=user,
        s=str(user),
        ids=endpoint_ids,
    )[0]
    return {name: int(count) for name, count in row.items()}


def erased_lines(stack: Stack, user: uuid.UUID) -> list[dict[str, Any]]:
    return [
        r
        for r in stack.processes["worker"].json_lines()
        if r.get("event") == "webhook.user_erased" and r.get("user_id") == str(user)
    ]


def dead_lettered(stack: Stack) -> list[Any]:
    return asyncio.run(rabbitmq.drain(stack.res.amqp_url, "webhooks.events.dlq"))


def test_erases_endpoints_pending_retries_and_billing_rows_and_nothing_is_sent_afterwards(
    stack: Stack, receiver: Receiver
) -> None:
    user, other = uuid.uuid4(), uuid.uuid4()
    tag = uuid.uuid4().hex[:8]
    failing_path, ok_path, other_path = f"/status/500/{tag}", f"/ok/{tag}", f"/ok/other-{tag}"
    types = ["conversation.message_completed.v1", "plan.changed.v1"]
    failing = new_endpoint(stack, user, receiver.url(failing_path))
    ok = new_endpoint(stack, user, receiver.url(ok_path), types)
    others = new_endpoint(stack, other, receiver.url(other_path), types)
    ids = [failing["id"], ok["id"]]
    with stack.client(user) as client:  # two secrets on one endpoint
        assert client.post(f"/endpoints/{ok['id']}/secret/rotate").status_code == 200

    # Billing gives both users a plan: billing_plans, inbound_events and a plan.changed.v1 outbox row each.
    billing = {u: subscription_event(u) for u in (user, other)}
    for payload in billing.values():
        response = post(stack, *signed(payload))
        assert response.json()["outcome"] == "applied", response.text
    stack.publish([message_completed(user), message_completed(user), message_completed(other)])

    def retrying() -> list[dict]:
        rows = deliveries(stack, failing["id"])
        ready = len(rows) == 2 and all(r["status"] == "pending" and r["attempt_count"] >= 1 for r in rows)
        return rows if ready else []

    wait_for(retrying, timeout=30, what="two failing deliveries waiting for their retry")
    wait_for(
        lambda: len([r for r in deliveries(stack, ok["id"]) if r["status"] == "succeeded"]) == 3,
        what="the other endpoint's deliveries (two messages and the plan change) succeeded",
    )
    wait_for(lambda: len(receiver.requests(other_path)) == 2, what="the other user's deliveries")
    before = held(stack, user, ids)
    expected = {"endpoints": 2, "secrets": 3, "deliveries": 5, "billing_plans": 1, "outbox": 1}
    assert {k: before[k] for k in expected} == expected
    assert before["attempts"] >= 5
    others_before = held(stack, other, [others["id"]])

    event = deleted(user)
    stack.publish([event])
    [line] = wait_for(lambda: erased_lines(stack, user), what="the erasure logged")
    assert set(held(stack, user, ids).values()) == {0}
    assert {k: line[k] for k in expected} == expected
    assert line["attempts"] >= before["attempts"]
    assert (line["inbound_redacted"], line["settled"]) == (1, True)
    assert str(event.email) not in json.dumps(line)
    # The provider's event is redacted, not forgotten: a replay of it is still a duplicate.
    [inbound] = stack.query(
        "SELECT user_id, payload, outcome FROM webhooks.inbound_events WHERE event_id = :e",
        e=billing[user]["id"],
    )
    assert inbound == {"user_id": None, "payload": {}, "outcome": "applied"}
    assert post(stack, *signed(billing[user])).json()["outcome"] == "duplicate"

    # The retries that were due never come, and a later event for the user finds no endpoint. Another
    # user's event, published after it, marks when the worker has got that far.
    failing_seen = len(receiver.requests(failing_path))
    ok_seen = len(receiver.requests(ok_path))
    stack.publish([message_completed(user), message_completed(other)])
    wait_for(lambda: len(receiver.requests(other_path)) == 3, what="the other user's later delivery")
    time.sleep(RETRY * 2)
    assert len(receiver.requests(failing_path)) == failing_seen
    assert len(receiver.requests(ok_path)) == ok_seen
    assert set(held(stack, user, ids).values()) == {0}

    # The same event again: logged with nothing left to erase, no failure.
    stack.publish([event])
    second = wait_for(lambda: erased_lines(stack, user)[1:], what="the redelivered event handled")[0]
    counted = [*expected, "attempts", "inbound_redacted", "in_flight_waited"]
    assert {k: second[k] for k in counted} == dict.fromkeys(counted, 0)
    assert dead_lettered(stack) == []

    # The other user kept everything, plus the one later delivery and its attempt.
    after = held(stack, other, [others["id"]])
    grown = {"deliveries": others_before["deliveries"] + 1, "attempts": others_before["attempts"] + 1}
    assert after == {**others_before, **grown}
    with stack.client(other) as client:
        [endpoint] = client.get("/endpoints").json()["data"]
    assert (endpoint["id"], endpoint["enabled"]) == (others["id"], True)


def test_an_attempt_in_flight_is_waited_for_and_never_repeated(stack: Stack, receiver: Receiver) -> None:
    user = uuid.uuid4()
    path = f"/slow/{SLOW}/1/{uuid.uuid4().hex[:8]}"
    endpoint = new_endpoint(stack, user, receiver.url(path))
    stack.publish([message_completed(user)])
    [request] = wait_for(lambda: receiver.requests(path), what="the request in flight")

    stack.publish([deleted(user)])
    wait_for(lambda: held(stack, user, [endpoint["id"]])["endpoints"] == 0, interval=0.05, what="the erasure")
    # The endpoint disappeared only after the receiver had answered.
    assert time.time() >= request["received_at"] + SLOW
    [line] = erased_lines(stack, user)
    assert (line["in_flight_waited"], line["settled"]) == (1, True)
    time.sleep(RETRY * 2)
    assert len(receiver.requests(path)) == 1
    assert set(held(stack, user, [endpoint["id"]]).values()) == {0}


def test_user_deleted_is_not_an_event_endpoints_can_subscribe_to(stack: Stack, receiver: Receiver) -> None:
    with stack.client(uuid.uuid4()) as client:
        response = client.post(
            "/endpoints", json={"url": receiver.url("/ok/x"), "event_types": ["user.deleted.v1"]}
        )
    assert response.status_code == 422
    assert "unknown event types" in response.json()["detail"]
