"""Delivery against real receivers: Standard Webhooks signatures, the retry schedule with jitter, and
what each kind of answer does (2xx, 3xx, 410, 429/503 with Retry-After, 5xx for too long, timeouts,
oversized bodies). The worker, beat, relay, notify worker, receivers and SMTP sink are real processes;
the retry schedule is compressed through settings."""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from parley_common.testing.net import free_port
from parley_common.testing.processes import ProcessManager
from standardwebhooks import Webhook

from tests.support.tls import make_tls_files
from tests.webhooks.events import message_completed, plan_changed, quota_crossed
from tests.webhooks.support import (
    Isolated,
    Receiver,
    Stack,
    attempts,
    deliveries,
    endpoint_row,
    new_endpoint,
    settled,
    start_receiver,
    start_stack,
    wait_for,
)

SCHEDULE = [0.5, 1.0, 1.5, 2.0, 2.0, 2.0, 2.0]
JITTER = 0.2
DISABLE_AFTER = 600.0  # test_disable.py compresses this one; here no endpoint should reach it
TIMEOUT = 3.0  # generous: a loaded 2-core machine can take a second to answer even a fast receiver
CAP = 65536
# Receiver-observed gaps may exceed the scheduled delay by the poll interval plus queueing behind the
# other deliveries on this shared 2-core machine; they may never be shorter.
SLACK = 10.0


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_tls_files(tmp_path_factory.mktemp("tls"), ["receiver.test"])


@pytest.fixture(scope="module")
def canary_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def receiver(module_processes: ProcessManager, canary_port: int) -> Receiver:
    return start_receiver(module_processes, canaries=[f"127.0.0.2:{canary_port}"])


@pytest.fixture(scope="module")
def tls_receiver(module_processes: ProcessManager, tls: tuple[Path, Path, Path]) -> Receiver:
    return start_receiver(module_processes, name="tls-receiver", tls=(tls[1], tls[2]))


@pytest.fixture(scope="module")
def stack(module_processes: ProcessManager, isolated: Isolated, tls: tuple[Path, Path, Path]) -> Stack:
    return start_stack(
        module_processes,
        isolated,
        {
            "PARLEY_WEBHOOKS_RETRY_SCHEDULE": ",".join(str(s) for s in SCHEDULE),
            "PARLEY_WEBHOOKS_RETRY_JITTER": str(JITTER),
            "PARLEY_WEBHOOKS_DISABLE_AFTER": str(DISABLE_AFTER),
            "PARLEY_WEBHOOKS_TIMEOUT": str(TIMEOUT),
            "PARLEY_WEBHOOKS_CONNECT_TIMEOUT": "2",
            "PARLEY_WEBHOOKS_LEASE_SECONDS": "10",
            "PARLEY_WEBHOOKS_POLL_INTERVAL": "0.2",
            "PARLEY_WEBHOOKS_RESPONSE_CAP_BYTES": str(CAP),
            "PARLEY_WEBHOOKS_ALLOW_HTTP": "true",
            "PARLEY_WEBHOOKS_TEST_ALLOW_CIDRS": "127.0.0.1/32",
            "PARLEY_WEBHOOKS_TEST_RESOLVER": json.dumps(
                {"receiver.test": ["127.0.0.1"], "wrong-name.test": ["127.0.0.1"]}
            ),
            "PARLEY_WEBHOOKS_TLS_CA_FILE": str(tls[0]),
        },
    )


class TestRetriesAndSignatures:
    def test_500_500_500_then_200_for_200_events(self, stack: Stack, receiver: Receiver) -> None:
        user = uuid.uuid4()
        tag = uuid.uuid4().hex[:8]
        endpoint = new_endpoint(stack, user, receiver.url(f"/flaky/3/{tag}"))
        events = [message_completed(user) for _ in range(200)]
        stack.publish(events)

        rows = wait_for(
            lambda: settled(stack, endpoint["id"], 200), timeout=120, interval=0.5, what="200 settled"
        )
        assert {r["status"] for r in rows} == {"succeeded"}
        assert {r["attempt_count"] for r in rows} == {4}

        requests = receiver.requests(f"/flaky/3/{tag}")
        by_id: dict[str, list[dict]] = defaultdict(list)
        for request in requests:
            by_id[request["headers"]["webhook-id"]].append(request)
        assert set(by_id) == {f"msg_{e.id.hex}" for e in events}
        verifier = Webhook(endpoint["secret"])
        for webhook_id, received in by_id.items():
            received.sort(key=lambda r: r["received_at"])
            assert [r["status"] for r in received] == [500, 500, 500, 200], webhook_id
            for request in received:
                # Every retry carries the same id and a fresh, verifiable signature over the same body.
                assert request["headers"]["webhook-id"] == webhook_id
                assert verifier.verify(request["body"], request["headers"])["id"] == str(
                    uuid.UUID(webhook_id.removeprefix("msg_"))
                )
            assert len({r["body"] for r in received}) == 1
            for k in range(3):
                gap = received[k + 1]["received_at"] - received[k]["received_at"]
                assert SCHEDULE[k] * (1 - JITTER) <= gap <= SCHEDULE[k] * (1 + JITTER) + SLACK, (
                    webhook_id,
                    k,
                    gap,
                )

        # The stored schedule is exact: each retry was planned within the jitter of its slot, measured
        # from the end of the attempt before it, and never started before it was due.
        delays: list[float] = []
        for row in rows:
            tries = attempts(stack, row["id"])
            assert [a["outcome"] for a in tries] == ["failed", "failed", "failed", "succeeded"]
            assert [a["status_code"] for a in tries] == [500, 500, 500, 200]
            for k in range(3):
                planned = (tries[k + 1]["scheduled_at"] - tries[k]["finished_at"]).total_seconds()
                assert SCHEDULE[k] * (1 - JITTER) - 0.01 <= planned <= SCHEDULE[k] * (1 + JITTER) + 0.01
                assert tries[k + 1]["started_at"] >= tries[k + 1]["scheduled_at"]
                delays.append(planned / SCHEDULE[k])
        assert max(delays) - min(delays) > JITTER / 2, "retry delays show no jitter"


class TestAnswers:
    def test_410_disables_the_endpoint_after_one_attempt(self, stack: Stack, receiver: Receiver) -> None:
        user = uuid.uuid4()
        tag = uuid.uuid4().hex[:8]
        endpoint = new_endpoint(stack, user, receiver.url(f"/status/410/{tag}"))
        stack.publish([message_completed(user)])
        wait_for(lambda: not endpoint_row(stack, endpoint["id"])["enabled"], what="endpoint disabled")
        row = endpoint_row(stack, endpoint["id"])
        assert row["disabled_reason"] == "gone"
        [delivery] = wait_for(lambda: settled(stack, endpoint["id"], 1), what="delivery settled")
        assert delivery["status"] == "failed"
        assert [a["status_code"] for a in attempts(stack, delivery["id"])] == [410]
        assert len(receiver.requests(f"/status/410/{tag}")) == 1
        [event] = stack.query(
            "SELECT payload FROM webhooks.outbox WHERE event_type = 'webhooks.endpoint_disabled.v1' "
            "AND payload->>'endpoint_id' = :e",
            e=endpoint["id"],
        )
        assert event["payload"]["reason"] == "gone"
        assert event["payload"]["user_id"] == str(user)
        # A disabled endpoint receives nothing more.
        stack.publish([message_completed(user)])
        time.sleep(1.5)
        assert len(deliveries(stack, endpoint["id"])) == 1
        assert len(receiver.requests(f"/status/410/{tag}")) == 1

    def test_302_is_a_failure_and_the_redirect_target_sees_no_connection(
        self, stack: Stack, receiver: Receiver
    ) -> None:
        user = uuid.uuid4()
        tag = uuid.uuid4().hex[:8]
        endpoint = new_endpoint(stack, user, receiver.url(f"/redirect/{tag}"))
        stack.publish([message_completed(user)])
        [delivery] = wait_for(
            lambda: [d for d in deliveries(stack, endpoint["id"]) if d["attempt_count"] >= 2],
            what="a retry after the 302",
        )
        tries = attempts(stack, delivery["id"])
        assert tries[0]["status_code"] == 302
        assert tries[0]["outcome"] == "failed"
        assert "redirect" in tries[0]["error"]
        assert delivery["status"] == "pending"
        assert set(receiver.canary_hits().values()) == {0}
        with stack.client(user) as client:
            client.patch(f"/endpoints/{endpoint['id']}", json={"enabled": False})

    def test_slow_receiver_times_out_and_is_retried(self, stack: Stack, receiver: Receiver) -> None:
        user = uuid.uuid4()
        tag = uuid.uuid4().hex[:8]
        endpoint = new_endpoint(stack, user, receiver.url(f"/slow/6/1/{tag}"))
        stack.publish([message_completed(user)])
        [delivery] = wait_for(lambda: settled(stack, endpoint["id"], 1), what="delivery settled")
        assert delivery["status"] == "succeeded"
        tries = attempts(stack, delivery["id"])
        assert [a["outcome"] for a in tries] == ["timeout", "succeeded"]
        assert TIMEOUT * 1000 * 0.9 <= tries[0]["latency_ms"] < 6000
        received = receiver.requests(f"/slow/6/1/{tag}")
        assert len(received) == 2
        assert received[0]["headers"]["webhook-id"] == received[1]["headers"]["webhook-id"]

    def test_10_mib_response_is_read_only_up_to_the_cap(self, stack: Stack, receiver: Receiver) -> None:
        user = uuid.uuid4()
        tag = uuid.uuid4().hex[:8]
        size = 10 * 1024 * 1024
        endpoint = new_endpoint(stack, user, receiver.url(f"/big/{size}/{tag}"))
        stack.publish([message_completed(user)])
        [delivery] = wait_for(lambda: settled(stack, endpoint["id"], 1), what="delivery settled")
        assert delivery["status"] == "succeeded"
        [attempt] = attempts(stack, delivery["id"])
        assert attempt["response_bytes"] == CAP
        assert len(attempt["response_body"]) == CAP
        assert attempt["response_truncated"] is True
        # The sender hung up after the cap: the receiver could not push the whole body.
        [record] = wait_for(
            lambda: [r for r in receiver.requests(f"/big/{size}/{tag}") if "bytes_written" in r],
            what="the receiver finished writing",
        )
        assert record["bytes_written"] < size

    @pytest.mark.parametrize(("status", "wait"), [(429, 3), (503, 2)])
    def test_retry_after_is_honoured(self, stack: Stack, receiver: Receiver, status: int, wait: int) -> None:
        user = uuid.uuid4()
        tag = uuid.uuid4().hex[:8]
        endpoint = new_endpoint(stack, user, receiver.url(f"/retry-after/{status}/{wait}/1/{tag}"))
        stack.publish([message_completed(user)])
        [delivery] = wait_for(lambda: settled(stack, endpoint["id"], 1), what="delivery settled")
        assert delivery["status"] == "succeeded"
        first, second = sorted(
            receiver.requests(f"/retry-after/{status}/{wait}/1/{tag}"), key=lambda r: r["received_at"]
        )
        assert first["status"] == status
        # The schedule alone would have retried after about 0.5 s.
        assert second["received_at"] - first["received_at"] >= wait


class TestRouting:
    def test_each_endpoint_receives_only_its_types_and_each_event_once(
        self, stack: Stack, receiver: Receiver
    ) -> None:
        user, other = uuid.uuid4(), uuid.uuid4()
        tag = uuid.uuid4().hex[:8]
        replies = new_endpoint(stack, user, receiver.url(f"/ok/{tag}/replies"))
        account = new_endpoint(
            stack, user, receiver.url(f"/ok/{tag}/account"), ["quota.threshold_crossed.v1", "plan.changed.v1"]
        )
        new_endpoint(
            stack,
            other,
            receiver.url(f"/ok/{tag}/other"),
            ["conversation.message_completed.v1", "quota.threshold_crossed.v1", "plan.changed.v1"],
        )
        reply, quota, plan = message_completed(user), quota_crossed(user), plan_changed(user)
        stack.publish([reply, quota, plan, reply])  # the reply twice: a redelivered event

        wait_for(lambda: settled(stack, account["id"], 2), what="account deliveries")
        wait_for(lambda: settled(stack, replies["id"], 1), what="reply delivery")
        time.sleep(1)
        got_replies = receiver.requests(f"/ok/{tag}/replies")
        got_account = receiver.requests(f"/ok/{tag}/account")
        assert [json.loads(r["body"])["type"] for r in got_replies] == ["conversation.message_completed.v1"]
        assert sorted(json.loads(r["body"])["type"] for r in got_account) == [
            "plan.changed.v1",
            "quota.threshold_crossed.v1",
        ]
        assert receiver.requests(f"/ok/{tag}/other") == []
        body = json.loads(got_replies[0]["body"])
        assert body["id"] == str(reply.id)
        assert body["conversation_id"] == str(reply.conversation_id)
        assert "traceparent" not in body


class TestReplay:
    def test_replay_one_and_replay_failed_in_a_time_range(self, stack: Stack, receiver: Receiver) -> None:
        user = uuid.uuid4()
        tag = uuid.uuid4().hex[:8]
        endpoint = new_endpoint(stack, user, receiver.url(f"/status/410/{tag}"))
        eid = endpoint["id"]
        with stack.client(user) as client:
            early = [message_completed(user) for _ in range(2)]
            stack.publish(early)
            wait_for(lambda: settled(stack, eid, 2), what="first batch failed")
            middle = datetime.now(UTC)
            time.sleep(0.2)
            assert client.patch(f"/endpoints/{eid}", json={"enabled": True}).status_code == 200
            late = [message_completed(user) for _ in range(2)]
            stack.publish(late)
            wait_for(lambda: settled(stack, eid, 4), what="second batch failed")
            assert {d["status"] for d in deliveries(stack, eid)} == {"failed"}

            window = {"since": middle.isoformat(), "until": datetime.now(UTC).isoformat()}
            refused = client.post(f"/endpoints/{eid}/replay", json=window)
            assert refused.status_code == 409  # disabled again by the second 410
            fixed = client.patch(
                f"/endpoints/{eid}", json={"enabled": True, "url": receiver.url(f"/ok/{tag}")}
            )
            assert fixed.status_code == 200
            bad = client.post(
                f"/endpoints/{eid}/replay", json={"since": window["until"], "until": window["since"]}
            )
            assert bad.status_code == 422
            replayed = client.post(f"/endpoints/{eid}/replay", json=window)
            assert replayed.status_code == 202
            assert replayed.json() == {"replayed": 2}
            expected = {f"msg_{e.id.hex}" for e in late}
            wait_for(lambda: len(receiver.requests(f"/ok/{tag}")) == 2, what="replayed deliveries")
            got = receiver.requests(f"/ok/{tag}")
            assert {r["headers"]["webhook-id"] for r in got} == expected
            for request in got:
                Webhook(endpoint["secret"]).verify(request["body"], request["headers"])

            failed = client.get("/deliveries", params={"endpoint_id": eid, "status": "failed"}).json()["data"]
            assert {d["webhook_id"] for d in failed} == {f"msg_{e.id.hex}" for e in early}
            one = failed[0]
            replay = client.post(f"/deliveries/{one['id']}/replay")
            assert replay.status_code == 202
            assert replay.json()["status"] == "pending"
            again = client.post(f"/deliveries/{one['id']}/replay")
            assert again.status_code in (202, 409)
            wait_for(lambda: len(receiver.requests(f"/ok/{tag}")) >= 3, what="the single replay")
            assert receiver.requests(f"/ok/{tag}")[2]["headers"]["webhook-id"] == one["webhook_id"]

            def replayed_and_settled() -> dict | None:
                detail = client.get(f"/deliveries/{one['id']}").json()
                finished = all(a["finished_at"] for a in detail["attempts"])
                return detail if detail["status"] == "succeeded" and finished else None

            detail = wait_for(replayed_and_settled, what="replayed delivery succeeded")
            # Its first try either got the 410 or never started (failed by the disable); then the replay.
            assert [a["status_code"] for a in detail["attempts"]] in ([410, 200], [200])
            listed = client.get("/deliveries", params={"endpoint_id": eid, "limit": 3}).json()
            assert len(listed["data"]) == 3
            assert listed["has_more"] is True
            rest = client.get(
                "/deliveries", params={"endpoint_id": eid, "cursor": listed["next_cursor"]}
            ).json()
            assert len(rest["data"]) == 1
            assert rest["has_more"] is False


class TestTls:
    def test_https_keeps_host_and_server_name_while_connecting_to_the_checked_address(
        self, stack: Stack, tls_receiver: Receiver
    ) -> None:
        user = uuid.uuid4()
        tag = uuid.uuid4().hex[:8]
        good = new_endpoint(stack, user, tls_receiver.url(f"/ok/{tag}", host="receiver.test", scheme="https"))
        stack.publish([message_completed(user)])
        [delivery] = wait_for(lambda: settled(stack, good["id"], 1), what="https delivery")
        assert delivery["status"] == "succeeded"
        [request] = tls_receiver.requests(f"/ok/{tag}")
        assert request["sni"] == "receiver.test"
        assert request["headers"]["host"] == f"receiver.test:{tls_receiver.port}"
        Webhook(good["secret"]).verify(request["body"], request["headers"])

    def test_certificate_is_checked_against_the_host_name(self, stack: Stack, tls_receiver: Receiver) -> None:
        user = uuid.uuid4()
        tag = uuid.uuid4().hex[:8]
        wrong = new_endpoint(
            stack, user, tls_receiver.url(f"/ok/{tag}", host="wrong-name.test", scheme="https")
        )
        stack.publish([message_completed(user)])
        [delivery] = wait_for(
            lambda: [
                d for d in deliveries(stack, wrong["id"]) if d["attempt_count"] >= 1 and d["last_error"]
            ],
            what="failed https attempt",
        )
        [attempt] = attempts(stack, delivery["id"])[:1]
        assert attempt["outcome"] == "network_error"
        assert "CERTIFICATE" in attempt["error"].upper()
        assert tls_receiver.requests(f"/ok/{tag}") == []
        with stack.client(user) as client:
            client.patch(f"/endpoints/{wrong['id']}", json={"enabled": False})


def test_api_lists_deliveries_with_attempts(stack: Stack, receiver: Receiver) -> None:
    user = uuid.uuid4()
    tag = uuid.uuid4().hex[:8]
    endpoint = new_endpoint(stack, user, receiver.url(f"/flaky/1/{tag}"))
    stack.publish([message_completed(user)])
    wait_for(lambda: settled(stack, endpoint["id"], 1), what="delivery settled")
    with stack.client(user) as client:
        [listed] = client.get("/deliveries", params={"endpoint_id": endpoint["id"]}).json()["data"]
        assert listed["status"] == "succeeded"
        assert listed["attempt_count"] == 2
        detail = client.get(f"/deliveries/{listed['id']}").json()
        assert [(a["number"], a["outcome"], a["status_code"]) for a in detail["attempts"]] == [
            (1, "failed", 500),
            (2, "succeeded", 200),
        ]
        assert detail["attempts"][0]["response_body"] == '{"ok":true}'
        assert httpx.get(stack.api_url + "/v1/webhooks/deliveries").status_code == 401
