"""The endpoint API: owner-scoped CRUD, a secret shown once, rotation with overlap, test sends,
problem+json errors. Reached with the gateway's internal token, as the gateway forwards it."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from parley_common.testing.processes import ProcessManager
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from tests.webhooks.support import Isolated, Receiver, Stack, start_stack, wait_for


@pytest.fixture(scope="module")
def stack(module_processes: ProcessManager, isolated: Isolated) -> Stack:
    return start_stack(
        module_processes,
        isolated,
        {
            "PARLEY_WEBHOOKS_ALLOW_HTTP": "true",
            "PARLEY_WEBHOOKS_TEST_ALLOW_CIDRS": "127.0.0.1/32",
            "PARLEY_WEBHOOKS_POLL_INTERVAL": "0.2",
            "PARLEY_WEBHOOKS_SECRET_OVERLAP": "4",
        },
    )


def create(client: httpx.Client, url: str, **fields: object) -> dict:
    response = client.post(
        "/endpoints", json={"url": url, "event_types": ["conversation.message_completed.v1"], **fields}
    )
    assert response.status_code == 201, response.text
    return response.json()


class TestCrud:
    def test_create_shows_the_secret_once_and_reads_never_return_it(
        self, stack: Stack, receiver: Receiver
    ) -> None:
        with stack.client(uuid.uuid4()) as client:
            created = create(client, receiver.url("/ok/crud"), description="orders")
            secret = created["secret"]
            assert secret.startswith("whsec_")
            assert 24 <= len(__import__("base64").b64decode(secret.removeprefix("whsec_"))) <= 64
            fetched = client.get(f"/endpoints/{created['id']}")
            assert fetched.status_code == 200
            assert "secret" not in fetched.json()
            assert secret not in fetched.text
            listed = client.get("/endpoints").json()["data"]
            assert [e["id"] for e in listed] == [created["id"]]
            assert secret not in json.dumps(listed)

    def test_update_and_delete(self, stack: Stack, receiver: Receiver) -> None:
        with stack.client(uuid.uuid4()) as client:
            created = create(client, receiver.url("/ok/update"))
            patched = client.patch(
                f"/endpoints/{created['id']}",
                json={
                    "description": "new",
                    "event_types": ["plan.changed.v1", "quota.threshold_crossed.v1"],
                    "enabled": False,
                },
            )
            assert patched.status_code == 200, patched.text
            body = patched.json()
            assert body["description"] == "new"
            assert body["event_types"] == ["plan.changed.v1", "quota.threshold_crossed.v1"]
            assert body["enabled"] is False
            assert body["disabled_reason"] == "manual"
            enabled = client.patch(f"/endpoints/{created['id']}", json={"enabled": True}).json()
            assert enabled["enabled"] is True
            assert enabled["disabled_reason"] is None
            assert client.delete(f"/endpoints/{created['id']}").status_code == 204
            gone = client.get(f"/endpoints/{created['id']}")
            assert gone.status_code == 404
            assert gone.headers["content-type"].startswith("application/problem+json")
            assert gone.json()["type"].endswith("/endpoint_not_found")

    def test_another_users_endpoint_is_a_404_everywhere(self, stack: Stack, receiver: Receiver) -> None:
        with stack.client(uuid.uuid4()) as owner, stack.client(uuid.uuid4()) as other:
            endpoint = create(owner, receiver.url("/ok/scoped"))["id"]
            assert other.get(f"/endpoints/{endpoint}").status_code == 404
            assert other.patch(f"/endpoints/{endpoint}", json={"description": "x"}).status_code == 404
            assert other.delete(f"/endpoints/{endpoint}").status_code == 404
            assert other.post(f"/endpoints/{endpoint}/test").status_code == 404
            assert other.post(f"/endpoints/{endpoint}/secret/rotate").status_code == 404
            window = {"since": "2000-01-01T00:00:00Z", "until": "2100-01-01T00:00:00Z"}
            assert other.post(f"/endpoints/{endpoint}/replay", json=window).status_code == 404
            assert other.get("/endpoints").json()["data"] == []
            delivery = owner.post(f"/endpoints/{endpoint}/test").json()["id"]
            assert other.get(f"/deliveries/{delivery}").status_code == 404
            assert other.post(f"/deliveries/{delivery}/replay").status_code == 404
            assert other.get("/deliveries").json()["data"] == []
            assert owner.get(f"/endpoints/{endpoint}").status_code == 200

    def test_bad_input_is_a_clear_problem_and_creates_nothing(self, stack: Stack, receiver: Receiver) -> None:
        with stack.client(uuid.uuid4()) as client:
            unknown = client.post(
                "/endpoints", json={"url": receiver.url("/ok/x"), "event_types": ["nope.v1"]}
            )
            assert unknown.status_code == 422
            assert unknown.headers["content-type"].startswith("application/problem+json")
            assert "unknown event types" in unknown.json()["detail"]
            empty = client.post("/endpoints", json={"url": receiver.url("/ok/x"), "event_types": []})
            assert empty.status_code == 422
            extra = client.post(
                "/endpoints",
                json={
                    "url": receiver.url("/ok/x"),
                    "event_types": ["plan.changed.v1"],
                    "secret": "whsec_mine",
                },
            )
            assert extra.status_code == 422
            bad_url = client.post(
                "/endpoints", json={"url": "ftp://example.com/", "event_types": ["plan.changed.v1"]}
            )
            assert bad_url.status_code == 400
            assert bad_url.json()["type"].endswith("/url_not_allowed")
            assert client.get("/endpoints").json()["data"] == []

    def test_no_token_or_a_forged_one_is_refused(self, stack: Stack) -> None:
        assert httpx.get(stack.api_url + "/v1/webhooks/endpoints").status_code == 401
        forged = httpx.get(
            stack.api_url + "/v1/webhooks/endpoints", headers={"authorization": "Bearer abc.def.ghi"}
        )
        assert forged.status_code == 401
        assert forged.json()["type"].endswith("/invalid_token")


class TestSecretsAndTestEvents:
    def test_test_event_is_signed_and_rotation_signs_with_both_secrets(
        self, stack: Stack, receiver: Receiver
    ) -> None:
        tag = uuid.uuid4().hex[:8]
        with stack.client(uuid.uuid4()) as client:
            endpoint = create(client, receiver.url(f"/ok/rotate-{tag}"))
            old = endpoint["secret"]
            sent = client.post(f"/endpoints/{endpoint['id']}/test")
            assert sent.status_code == 202, sent.text
            first = wait_for(lambda: receiver.requests(f"/ok/rotate-{tag}"), what="the test event")[0]
            assert first["headers"]["webhook-signature"].count("v1,") == 1
            payload = Webhook(old).verify(first["body"], first["headers"])
            assert payload["type"] == "webhooks.test.v1"
            assert first["headers"]["webhook-id"] == sent.json()["webhook_id"]

            rotated = client.post(f"/endpoints/{endpoint['id']}/secret/rotate")
            assert rotated.status_code == 200
            new = rotated.json()["secret"]
            assert new != old
            assert rotated.json()["previous_secret_expires_at"]
            client.post(f"/endpoints/{endpoint['id']}/test")
            second = wait_for(lambda: receiver.requests(f"/ok/rotate-{tag}")[1:], what="second test event")[0]
            signatures = second["headers"]["webhook-signature"].split(" ")
            assert len(signatures) == 2
            assert all(s.startswith("v1,") for s in signatures)
            Webhook(new).verify(second["body"], second["headers"])
            Webhook(old).verify(second["body"], second["headers"])

            detail = client.get(f"/deliveries/{sent.json()['id']}").json()
            assert detail["status"] == "succeeded"
            assert detail["payload"]["type"] == "webhooks.test.v1"
            assert [a["outcome"] for a in detail["attempts"]] == ["succeeded"]
            assert detail["attempts"][0]["status_code"] == 200
            assert detail["attempts"][0]["latency_ms"] is not None

            # After the overlap only the new secret signs; rotating twice never leaves three active.
            def one_signature() -> dict | None:
                client.post(f"/endpoints/{endpoint['id']}/test")
                latest = wait_for(lambda: receiver.requests(f"/ok/rotate-{tag}")[-1:], what="a test event")[0]
                return latest if latest["headers"]["webhook-signature"].count("v1,") == 1 else None

            third = wait_for(one_signature, timeout=20, interval=1, what="the old secret to expire")
            Webhook(new).verify(third["body"], third["headers"])
            with pytest.raises(WebhookVerificationError):
                Webhook(old).verify(third["body"], third["headers"])
            newer = client.post(f"/endpoints/{endpoint['id']}/secret/rotate").json()["secret"]
            newest = client.post(f"/endpoints/{endpoint['id']}/secret/rotate").json()["secret"]
            before = len(receiver.requests(f"/ok/rotate-{tag}"))
            client.post(f"/endpoints/{endpoint['id']}/test")
            last = wait_for(lambda: receiver.requests(f"/ok/rotate-{tag}")[before:], what="a test event")[0]
            assert last["headers"]["webhook-signature"].count("v1,") == 2
            Webhook(newest).verify(last["body"], last["headers"])
            Webhook(newer).verify(last["body"], last["headers"])
            with pytest.raises(WebhookVerificationError):
                Webhook(new).verify(last["body"], last["headers"])
