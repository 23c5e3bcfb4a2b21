"""SSRF: webhooks cannot be aimed at loopback, private, link-local or metadata addresses, in any
spelling, directly, through DNS, or through a redirect; checked at registration and again at every send.
Canary listeners on 127.0.0.2/127.0.0.3 stand for internal services and must count zero connections."""

from __future__ import annotations

import json
import uuid

import pytest
from parley_common.testing.net import free_port
from parley_common.testing.processes import ProcessManager
from parley_webhooks.ssrf import UnsafeUrl, UrlPolicy

from tests.webhooks.events import message_completed
from tests.webhooks.support import Isolated, Receiver, Stack, start_receiver, start_stack, wait_for

DENIED = [
    "127.0.0.1",
    "127.255.255.254",
    "0.0.0.0",
    "10.1.2.3",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "100.64.0.1",  # shared address space: not is_private
    "100.127.255.255",
    "169.254.169.254",  # cloud metadata
    "169.254.0.1",
    "192.0.0.192",
    "198.18.0.1",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "::",
    "::1",
    "::127.0.0.1",  # IPv4-compatible
    "fe80::1",
    "fc00::1",
    "fd00:ec2::254",  # AWS metadata over IPv6
    "ff02::1",
    "2001:db8::1",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:169.254.169.254",
    "::ffff:10.0.0.1",
    "::ffff:8.8.8.8",  # every mapped address: never a legitimate target
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1 (is_global is True for it)
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b:1::1",  # local-use NAT64
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "2002:c0a8:101::",  # 6to4 of 192.168.1.1
]
ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "11.0.0.1",
    "100.128.0.1",
    "172.32.0.1",
    "2606:4700:4700::1111",
    "64:ff9b::808:808",  # NAT64 of a public address
    "2002:808:808::",  # 6to4 of a public address
]


class TestPolicy:
    @pytest.mark.parametrize("address", DENIED)
    def test_deny_ranges(self, address: str) -> None:
        policy = UrlPolicy(allow_http=True)
        host = f"[{address}]" if ":" in address else address
        with pytest.raises(UnsafeUrl, match="may not receive webhooks"):
            policy.check(f"https://{host}/hook")

    @pytest.mark.parametrize("address", ALLOWED)
    def test_public_addresses_pass(self, address: str) -> None:
        host = f"[{address}]" if ":" in address else address
        checked = UrlPolicy().check(f"https://{host}:8443/hook?x=1")
        assert str(checked.address) == address
        assert checked.url.target == "/hook?x=1"

    @pytest.mark.parametrize(
        "host", ["2130706433", "0177.0.0.1", "0x7f.0.0.1", "0x7f000001", "127.1", "localhost"]
    )
    def test_other_spellings_of_loopback_and_names_in_etc_hosts(self, host: str) -> None:
        with pytest.raises(UnsafeUrl, match="127.0.0.1"):
            UrlPolicy().check(f"https://{host}/hook")

    def test_a_name_with_any_denied_address_is_refused(self) -> None:
        policy = UrlPolicy(resolver={"mixed.example": ["8.8.8.8", "10.0.0.5"], "ok.example": ["8.8.4.4"]})
        with pytest.raises(UnsafeUrl, match="10.0.0.5"):
            policy.check("https://mixed.example/")
        assert str(policy.check("https://OK.example./").address) == "8.8.4.4"

    @pytest.mark.parametrize(
        ("url", "reason"),
        [
            ("http://8.8.8.8/", "only https"),
            ("ftp://8.8.8.8/", "only https"),
            ("file:///etc/passwd", "only https"),
            ("gopher://8.8.8.8/", "only https"),
            ("https://user:secret@8.8.8.8/", "credentials"),
            ("https://user@8.8.8.8/", "credentials"),
            ("https://8.8.8.8/#top", "fragment"),
            ("https:///nohost", "no host"),
            ("https://8.8.8.8:99999/", "malformed"),
            ("https://8.8.8.8/a b", "whitespace"),
            ("https://does-not-exist.invalid/", "does not resolve"),
        ],
    )
    def test_url_shape(self, url: str, reason: str) -> None:
        with pytest.raises(UnsafeUrl, match=reason):
            UrlPolicy().check(url)

    def test_http_only_with_the_test_setting_and_allow_list_is_exact(self) -> None:
        policy = UrlPolicy(allow_http=True, allow_cidrs=["127.0.0.1/32"])
        assert str(policy.check("http://127.0.0.1:9/").address) == "127.0.0.1"
        for other in ("127.0.0.2", "[::ffff:127.0.0.1]", "[::1]"):
            with pytest.raises(UnsafeUrl):
                policy.check(f"http://{other}:9/")


# --- the real API and worker -------------------------------------------------------------------------

REGISTRATION_REFUSED = [
    "http://127.0.0.2/",
    "http://10.0.0.1/",
    "http://192.168.1.1/",
    "http://172.16.0.1/",
    "http://100.64.0.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]/",
    "http://[::ffff:127.0.0.2]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://[2002:a9fe:a9fe::]/",
    "http://[fd00:ec2::254]/",
    "http://[fe80::1]/",
    "http://0.0.0.0/",
    "http://2130706434/",
    "http://0177.0.0.2/",
    "http://0x7f000002/",
    "http://loopback.test/",
    "http://metadata.test/",
    "http://mixed.test/",
    "http://mapped.test/",
    "http://nat64.test/",
    "http://sixtofour.test/",
    "http://user:pass@receiver.test/",
    "ftp://receiver.test/",
]
API_RESOLVER = {
    "receiver.test": ["127.0.0.1"],
    "loopback.test": ["127.0.0.2"],
    "metadata.test": ["169.254.169.254"],
    "mixed.test": ["127.0.0.1", "10.0.0.1"],
    "mapped.test": ["::ffff:127.0.0.2"],
    "nat64.test": ["64:ff9b::7f00:2"],
    "sixtofour.test": ["2002:7f00:2::"],
    # What the names below resolve to when the endpoint is registered...
    "rebind-loopback.test": ["127.0.0.1"],
    "rebind-mapped.test": ["127.0.0.1"],
    "rebind-mixed.test": ["127.0.0.1"],
}
WORKER_RESOLVER = {
    **API_RESOLVER,
    # ...and when a delivery is sent (DNS rebinding).
    "rebind-loopback.test": ["127.0.0.2"],
    "rebind-mapped.test": ["::ffff:127.0.0.2"],
    "rebind-mixed.test": ["127.0.0.3", "127.0.0.1"],
}


@pytest.fixture(scope="module")
def port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def receiver(module_processes: ProcessManager, port: int) -> Receiver:
    return start_receiver(module_processes, canaries=[f"127.0.0.2:{port}", f"127.0.0.3:{port}"])


@pytest.fixture(scope="module")
def stack(module_processes: ProcessManager, isolated: Isolated, receiver: Receiver) -> Stack:
    settings = {
        "PARLEY_WEBHOOKS_ALLOW_HTTP": "true",
        "PARLEY_WEBHOOKS_TEST_ALLOW_CIDRS": "127.0.0.1/32",
        "PARLEY_WEBHOOKS_RETRY_SCHEDULE": "0.3,0.3,0.3",
        "PARLEY_WEBHOOKS_POLL_INTERVAL": "0.2",
        "PARLEY_WEBHOOKS_TIMEOUT": "2",
        "PARLEY_WEBHOOKS_CONNECT_TIMEOUT": "1",
        "PARLEY_WEBHOOKS_LEASE_SECONDS": "10",
        "PARLEY_WEBHOOKS_TEST_RESOLVER": json.dumps(API_RESOLVER),
    }
    return start_stack(
        module_processes,
        isolated,
        settings,
        worker_env={"PARLEY_WEBHOOKS_TEST_RESOLVER": json.dumps(WORKER_RESOLVER)},
    )


class TestRegistration:
    @pytest.mark.parametrize("url", REGISTRATION_REFUSED)
    def test_refused_with_a_problem_and_nothing_created(self, stack: Stack, url: str) -> None:
        with stack.client(uuid.uuid4()) as client:
            response = client.post("/endpoints", json={"url": url, "event_types": ["plan.changed.v1"]})
            assert response.status_code == 400, response.text
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.json()["type"].endswith("/url_not_allowed")
            assert client.get("/endpoints").json()["data"] == []

    def test_changing_the_url_is_checked_too(self, stack: Stack, receiver: Receiver) -> None:
        with stack.client(uuid.uuid4()) as client:
            created = client.post(
                "/endpoints", json={"url": receiver.url("/ok/x"), "event_types": ["plan.changed.v1"]}
            ).json()
            refused = client.patch(f"/endpoints/{created['id']}", json={"url": "http://169.254.169.254/"})
            assert refused.status_code == 400
            assert client.get(f"/endpoints/{created['id']}").json()["url"] == receiver.url("/ok/x")


class TestAtSendTime:
    def test_rebound_names_and_stored_unsafe_urls_are_refused_before_connecting(
        self, stack: Stack, receiver: Receiver, port: int
    ) -> None:
        user = uuid.uuid4()
        urls = [f"http://rebind-{kind}.test:{port}/hook" for kind in ("loopback", "mapped", "mixed")]
        with stack.client(user) as client:
            for url in urls:
                created = client.post(
                    "/endpoints", json={"url": url, "event_types": ["conversation.message_completed.v1"]}
                )
                assert created.status_code == 201, created.text
        # URLs a laxer policy might once have stored: the send-time check must stop them on its own.
        stored = [
            f"http://2130706434:{port}/hook",
            f"http://0177.0.0.2:{port}/hook",
            f"http://[::ffff:127.0.0.2]:{port}/hook",
            f"http://127.0.0.3:{port}/hook",
        ]
        for url in stored:
            stack.execute(
                "INSERT INTO webhooks.endpoints (id, user_id, url, event_types) "
                "VALUES (:id, :u, :url, ARRAY['conversation.message_completed.v1'])",
                id=uuid.uuid4(),
                u=user,
                url=url,
            )
        stack.publish([message_completed(user)])

        def refused_twice() -> list[dict]:
            rows = stack.query(
                "SELECT d.id, e.url, count(a.id) AS tries, "
                "bool_and(a.outcome = 'refused_address') AS all_refused, max(a.error) AS error "
                "FROM webhooks.deliveries d JOIN webhooks.endpoints e ON e.id = d.endpoint_id "
                "LEFT JOIN webhooks.attempts a ON a.delivery_id = d.id AND a.finished_at IS NOT NULL "
                "WHERE d.user_id = :u GROUP BY d.id, e.url",
                u=user,
            )
            return rows if len(rows) == 7 and all(r["tries"] >= 2 for r in rows) else []

        rows = wait_for(refused_twice, timeout=30, what="two refused attempts per endpoint")
        for row in rows:
            assert row["all_refused"], row
            assert "may not receive webhooks" in row["error"]
        assert receiver.canary_hits() == {f"127.0.0.2:{port}": 0, f"127.0.0.3:{port}": 0}
