"""Inbound billing webhooks: a Stripe-style signed subscription event becomes one plan.changed.v1 on the
bus (the gateway applies it); replays change nothing; bad signatures and stale timestamps are refused."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import httpx
import pytest
from parley_common.messaging import topology
from parley_common.testing import rabbitmq
from parley_common.testing.processes import ProcessManager

from tests.webhooks.support import Isolated, Stack, start_stack, wait_for

SECRET = "whsec_test_billing_secret_0123456789"


@pytest.fixture(scope="module")
def stack(module_processes: ProcessManager, isolated: Isolated) -> Stack:
    return start_stack(
        module_processes,
        isolated,
        {
            "PARLEY_BILLING_WEBHOOK_SECRET": SECRET,
            "PARLEY_BILLING_PRICE_PLANS": json.dumps({"price_pro": "pro", "price_team": "team"}),
            "PARLEY_BILLING_SIGNATURE_TOLERANCE": "300",
        },
        with_worker=False,
    )


def subscription_event(
    user_id: uuid.UUID | None,
    *,
    kind: str = "customer.subscription.updated",
    status: str = "active",
    price: str = "price_pro",
    created: int | None = None,
) -> dict[str, Any]:
    metadata = {"parley_user_id": str(user_id)} if user_id else {}
    return {
        "id": f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "type": kind,
        "created": created or int(time.time()),
        "data": {
            "object": {
                "id": f"sub_{uuid.uuid4().hex[:14]}",
                "object": "subscription",
                "status": status,
                "metadata": metadata,
                "items": {"data": [{"price": {"id": price}}]},
            }
        },
    }


def signed(
    payload: dict[str, Any], *, secret: str = SECRET, at: int | None = None
) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    timestamp = at or int(time.time())
    signature = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return body, {"stripe-signature": f"t={timestamp},v1={signature}", "content-type": "application/json"}


def post(stack: Stack, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(
        stack.api_url + "/v1/webhooks/inbound/billing", content=body, headers=headers, timeout=10
    )


def plan_events(stack: Stack, user_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = stack.query(
        "SELECT payload, published_at FROM webhooks.outbox "
        "WHERE event_type = 'plan.changed.v1' AND payload->>'user_id' = :u ORDER BY id",
        u=str(user_id),
    )
    return [r["payload"] for r in rows]


class TestValidEvents:
    def test_a_valid_event_changes_the_plan_once_and_replays_are_no_ops(self, stack: Stack) -> None:
        user = uuid.uuid4()
        payload = subscription_event(user)
        body, headers = signed(payload)
        first = post(stack, body, headers)
        assert first.status_code == 200, first.text
        assert first.json() == {"received": True, "outcome": "applied"}
        assert post(stack, body, headers).json()["outcome"] == "duplicate"
        body2, headers2 = signed(payload, at=int(time.time()) + 1)  # re-signed resend by the provider
        assert post(stack, body2, headers2).json()["outcome"] == "duplicate"

        [event] = plan_events(stack, user)
        assert (event["plan"], event["reason"], event["external_ref"]) == ("pro", "billing", payload["id"])
        assert event["previous_plan"] is None

        # The relay puts exactly one plan.changed.v1 on the gateway's queue.
        wait_for(
            lambda: (
                stack.query(
                    "SELECT 1 FROM webhooks.outbox WHERE event_type = 'plan.changed.v1' AND published_at IS NULL"
                )
                == []
            ),
            what="outbox published",
        )
        messages = asyncio.run(rabbitmq.drain(stack.res.amqp_url, topology.GATEWAY.name))
        mine = [m for m in messages if json.loads(m.body)[1]["event"]["user_id"] == str(user)]
        assert len(mine) == 1
        assert mine[0].headers["task"] == "plan.changed.v1"
        assert json.loads(mine[0].body)[1]["event"]["plan"] == "pro"

    def test_cancellation_falls_back_and_older_events_lose(self, stack: Stack) -> None:
        user = uuid.uuid4()
        now = int(time.time())
        assert (
            post(stack, *signed(subscription_event(user, price="price_team", created=now - 100))).json()[
                "outcome"
            ]
            == "applied"
        )
        deleted = subscription_event(
            user, kind="customer.subscription.deleted", status="canceled", created=now
        )
        assert post(stack, *signed(deleted)).json()["outcome"] == "applied"
        late = subscription_event(user, price="price_pro", created=now - 50)  # arrives after, happened before
        assert post(stack, *signed(late)).json()["outcome"] == "stale"
        events = plan_events(stack, user)
        assert [(e["plan"], e["previous_plan"]) for e in events] == [("team", None), ("free", "team")]

    @pytest.mark.parametrize(
        ("payload_kwargs", "outcome"),
        [
            ({"price": "price_unknown"}, "ignored_unknown_price"),
            ({"status": "past_due"}, "ignored_status"),
            ({"kind": "invoice.paid"}, "ignored_type"),
        ],
    )
    def test_events_that_change_no_plan_are_recorded_only(
        self, stack: Stack, payload_kwargs: dict[str, str], outcome: str
    ) -> None:
        user = uuid.uuid4()
        payload = subscription_event(user, **payload_kwargs)
        assert post(stack, *signed(payload)).json()["outcome"] == outcome
        assert plan_events(stack, user) == []
        [row] = stack.query(
            "SELECT outcome FROM webhooks.inbound_events WHERE event_id = :e", e=payload["id"]
        )
        assert row["outcome"] == outcome

    def test_an_event_without_a_user_changes_nothing(self, stack: Stack) -> None:
        payload = subscription_event(None)
        assert post(stack, *signed(payload)).json()["outcome"] == "ignored_no_user"


class TestRefused:
    def refused(
        self, stack: Stack, body: bytes, headers: dict[str, str], code: str, status: int = 400
    ) -> None:
        response = post(stack, body, headers)
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["type"].endswith("/" + code)

    def test_bad_signature(self, stack: Stack) -> None:
        user = uuid.uuid4()
        payload = subscription_event(user)
        self.refused(stack, *signed(payload, secret="whsec_someone_else"), "invalid_signature")
        body, headers = signed(payload)
        self.refused(stack, body.replace(b"price_pro", b"price_team"), headers, "invalid_signature")
        self.refused(stack, body, {"content-type": "application/json"}, "missing_signature")
        self.refused(stack, body, {"stripe-signature": "v1=abc"}, "invalid_signature")
        assert plan_events(stack, user) == []
        assert stack.query("SELECT 1 FROM webhooks.inbound_events WHERE event_id = :e", e=payload["id"]) == []
        # The genuine event still goes through afterwards: refusals recorded nothing.
        assert post(stack, body, headers).json()["outcome"] == "applied"

    # 5 s past the 300 s tolerance: the signed ``t`` is a whole second and the request takes time to
    # arrive, so a 1 s margin let a "future" timestamp land inside the tolerance on a busy machine.
    @pytest.mark.parametrize("skew", [-305, 305])
    def test_stale_or_future_timestamp(self, stack: Stack, skew: int) -> None:
        user = uuid.uuid4()
        payload = subscription_event(user)
        self.refused(stack, *signed(payload, at=int(time.time()) + skew), "timestamp_out_of_tolerance")
        assert plan_events(stack, user) == []

    def test_oversized_body(self, stack: Stack) -> None:
        payload = subscription_event(uuid.uuid4())
        payload["padding"] = "x" * 300_000
        self.refused(stack, *signed(payload), "payload_too_large", status=413)
