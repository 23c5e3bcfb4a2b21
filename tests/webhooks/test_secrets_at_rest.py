"""Endpoint signing secrets are stored encrypted: the database never holds one a receiver would trust;
``parley-webhooks-migrate`` encrypts rows written before (and re-encrypts under a new first key); a
worker whose keys cannot open a secret sends nothing and records no attempt."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest
from cryptography.fernet import Fernet
from parley_common.testing.processes import ProcessManager, venv_command
from parley_webhooks.secret_box import SecretBox, SecretUnreadable
from standardwebhooks import Webhook

from tests.webhooks.support import (
    Isolated,
    Receiver,
    Stack,
    attempts,
    deliveries,
    new_endpoint,
    start_stack,
    start_worker,
    wait_for,
)

OLD_KEY = Fernet.generate_key().decode()
NEW_KEY = Fernet.generate_key().decode()


@pytest.fixture(scope="module")
def stack(module_processes: ProcessManager, isolated: Isolated) -> Stack:
    return start_stack(
        module_processes,
        isolated,
        {
            "PARLEY_WEBHOOKS_ALLOW_HTTP": "true",
            "PARLEY_WEBHOOKS_TEST_ALLOW_CIDRS": "127.0.0.1/32",
            "PARLEY_WEBHOOKS_POLL_INTERVAL": "0.2",
            "PARLEY_WEBHOOKS_LEASE_SECONDS": "3",
            "PARLEY_WEBHOOKS_TIMEOUT": "1",
            "PARLEY_WEBHOOKS_CONNECT_TIMEOUT": "1",
            "PARLEY_WEBHOOKS_ENCRYPTION_KEYS": f"{NEW_KEY},{OLD_KEY}",
        },
    )


def migrate(stack: Stack) -> list[str]:
    """Runs ``parley-webhooks-migrate`` as the Helm Job does; the counts it logged as re-encrypted."""
    done = subprocess.run(
        [venv_command("parley-webhooks-migrate")],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return [str(line["count"]) for line in lines if line.get("event") == "webhooks.secrets_resealed"]


def stored_secrets(stack: Stack, endpoint_id: str) -> list[str]:
    rows = stack.query(
        "SELECT secret FROM webhooks.endpoint_secrets WHERE endpoint_id = :e ORDER BY id", e=endpoint_id
    )
    return [r["secret"] for r in rows]


class TestSecretBox:
    def test_a_sealed_secret_opens_with_any_configured_key_and_only_with_one(self) -> None:
        secret = "whsec_" + "QUJD" * 11
        sealed = SecretBox(OLD_KEY).seal(secret)
        assert secret not in sealed
        assert SecretBox(f"{NEW_KEY},{OLD_KEY}").open(sealed) == secret
        assert not SecretBox(f"{NEW_KEY},{OLD_KEY}").is_current(sealed)
        assert SecretBox(OLD_KEY).is_current(sealed)
        with pytest.raises(SecretUnreadable, match="PARLEY_WEBHOOKS_ENCRYPTION_KEYS"):
            SecretBox(NEW_KEY).open(sealed)

    def test_a_malformed_key_is_refused_without_echoing_it(self) -> None:
        with pytest.raises(ValueError, match="key 2 is not a Fernet key") as caught:
            SecretBox(f"{NEW_KEY},not-a-key-but-a-secret")
        assert "not-a-key-but-a-secret" not in str(caught.value)
        with pytest.raises(ValueError, match="holds no key"):
            SecretBox(" , ")


class TestStorage:
    def test_the_database_holds_tokens_and_deliveries_are_signed_with_the_secret(
        self, stack: Stack, receiver: Receiver
    ) -> None:
        tag = uuid.uuid4().hex[:8]
        user = uuid.uuid4()
        endpoint = new_endpoint(stack, user, receiver.url(f"/ok/sealed-{tag}"))
        (stored,) = stored_secrets(stack, endpoint["id"])
        assert not stored.startswith("whsec_")
        assert endpoint["secret"].removeprefix("whsec_") not in stored
        assert SecretBox(NEW_KEY).open(stored) == endpoint["secret"]  # sealed under the first key

        with stack.client(user) as client:
            rotated = client.post(f"/endpoints/{endpoint['id']}/secret/rotate").json()["secret"]
            assert client.post(f"/endpoints/{endpoint['id']}/test").status_code == 202
        assert [SecretBox(NEW_KEY).open(s) for s in stored_secrets(stack, endpoint["id"])] == [
            endpoint["secret"],
            rotated,
        ]
        (request,) = wait_for(lambda: receiver.requests(f"/ok/sealed-{tag}"), what="the test event")
        Webhook(rotated).verify(request["body"], request["headers"])
        Webhook(endpoint["secret"]).verify(request["body"], request["headers"])  # the overlap


class TestMigrate:
    def test_migrate_encrypts_plain_rows_and_re_encrypts_under_the_first_key(
        self, stack: Stack, receiver: Receiver
    ) -> None:
        tag = uuid.uuid4().hex[:8]
        owner = uuid.uuid4()
        plain = new_endpoint(stack, owner, receiver.url(f"/ok/plain-{tag}"))
        old = new_endpoint(stack, uuid.uuid4(), receiver.url(f"/ok/old-{tag}"))
        # As an earlier version stored them: the secret itself, or a token under a key now second.
        stack.execute(
            "UPDATE webhooks.endpoint_secrets SET secret = :s WHERE endpoint_id = :e",
            s=plain["secret"],
            e=plain["id"],
        )
        stack.execute(
            "UPDATE webhooks.endpoint_secrets SET secret = :s WHERE endpoint_id = :e",
            s=SecretBox(OLD_KEY).seal(old["secret"]),
            e=old["id"],
        )
        # A row written before encryption still signs until migrate runs (a rolling upgrade).
        with stack.client(owner) as client:
            assert client.post(f"/endpoints/{plain['id']}/test").status_code == 202
        (request,) = wait_for(lambda: receiver.requests(f"/ok/plain-{tag}"), what="the test event")
        Webhook(plain["secret"]).verify(request["body"], request["headers"])

        assert migrate(stack) == ["2"]
        for endpoint in (plain, old):
            (stored,) = stored_secrets(stack, endpoint["id"])
            assert SecretBox(NEW_KEY).open(stored) == endpoint["secret"]
            assert SecretBox(NEW_KEY).is_current(stored)
        assert migrate(stack) == []  # nothing left to re-encrypt

    def test_a_worker_without_the_key_sends_nothing_and_the_delivery_waits(
        self, stack: Stack, receiver: Receiver, module_processes: ProcessManager
    ) -> None:
        tag = uuid.uuid4().hex[:8]
        user = uuid.uuid4()
        endpoint = new_endpoint(stack, user, receiver.url(f"/ok/nokey-{tag}"))
        stack.processes["worker"].stop()
        stranger = start_worker(
            module_processes,
            {**stack.env, "PARLEY_WEBHOOKS_ENCRYPTION_KEYS": Fernet.generate_key().decode()},
            name="webhooks-worker-wrong-key",
        )
        try:
            with stack.client(user) as client:
                assert client.post(f"/endpoints/{endpoint['id']}/test").status_code == 202
            stranger.wait_for_log("webhook.secret_unreadable", timeout=30)
            (delivery,) = deliveries(stack, endpoint["id"])
            assert delivery["status"] == "pending"
            assert attempts(stack, delivery["id"]) == []
            assert receiver.requests(f"/ok/nokey-{tag}") == []
        finally:
            stranger.stop()
        # With the right key back, the delivery goes out once its lease has run out.
        stack.processes["worker"] = start_worker(module_processes, stack.env, name="webhooks-worker-again")
        (request,) = wait_for(lambda: receiver.requests(f"/ok/nokey-{tag}"), what="the delivery", timeout=30)
        Webhook(endpoint["secret"]).verify(request["body"], request["headers"])
