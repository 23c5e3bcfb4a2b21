"""Gateway test stacks: the fake provider, chat and one or more gateway processes, all real, on loopback.

Each stack gets a Redis key prefix of its own (under the session's), so global keys such as usage's
``seeded`` marker or the plans revision never leak between stacks.
"""

from __future__ import annotations

import secrets
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis
from parley_common.testing.net import free_port
from parley_common.testing.processes import ManagedProcess, ProcessManager, venv_command

from tests.support.platform import PlatformConfig, start_fake_provider

PASSWORD = "correct horse battery"

# Test traffic registers many accounts from 127.0.0.1; the attempt limits get their own test.
QUIET_AUTH_LIMITS = {"PARLEY_AUTH_IP_PER_MINUTE": "100000", "PARLEY_AUTH_EMAIL_PER_MINUTE": "100000"}


@dataclass
class Account:
    id: str
    email: str
    access: str
    refresh: str

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.access}"}


@dataclass
class Stack:
    manager: ProcessManager
    config: PlatformConfig
    prefix: str
    env: dict[str, str]
    provider_url: str = ""
    chat_url: str = ""
    gateways: list[ManagedProcess] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    extra: dict[str, ManagedProcess] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.urls[0]

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.config.redis_url)

    def seed_quota_counters(self) -> None:
        """What usage does after reconciling the counters from the ledger."""
        with self.redis() as client:
            client.set(f"{self.prefix}quota:seeded", "1")

    def start_gateway(
        self, name: str = "gateway", port: int | None = None, ready: bool = True, **env: str
    ) -> tuple[ManagedProcess, str]:
        port = port or free_port()
        process = self.manager.spawn(
            name,
            [venv_command("parley-gateway-api")],
            {**self.env, "PARLEY_HTTP_PORT": str(port), **env},
            ready_url=f"http://127.0.0.1:{port}/readyz" if ready else None,
        )
        url = f"http://127.0.0.1:{port}"
        self.gateways.append(process)
        self.urls.append(url)
        return process, url

    def register(self, url: str | None = None, email: str | None = None) -> Account:
        url = url or self.url
        email = email or f"user-{uuid.uuid4().hex[:12]}@example.com"
        with httpx.Client(base_url=url, timeout=10) as client:
            created = client.post("/v1/auth/register", json={"email": email, "password": PASSWORD})
            assert created.status_code == 201, created.text
            login = client.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
            assert login.status_code == 200, login.text
            tokens = login.json()
        return Account(created.json()["id"], email, tokens["access_token"], tokens["refresh_token"])

    def admin(self) -> Account:
        account = self.register()
        run_admin_cli(self.env, "promote", account.email)
        return account

    def set_user(self, admin: Account, user_id: str, **change: Any) -> dict[str, Any]:
        response = httpx.patch(
            f"{self.url}/v1/admin/users/{user_id}", json=change, headers=admin.headers, timeout=10
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


def run_admin_cli(env: dict[str, str], action: str, email: str) -> None:
    result = subprocess.run(
        [venv_command("parley-gateway-admin"), action, email],
        env={**_os_env(), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _os_env() -> dict[str, str]:
    import os

    return dict(os.environ)


def start_stack(
    manager: ProcessManager,
    config: PlatformConfig,
    *,
    gateways: int = 1,
    provider_args: tuple[str, ...] = (),
    with_chat: bool = True,
    with_ledger: bool = False,
    seeded: bool = True,
    **gateway_env: str,
) -> Stack:
    prefix = f"{config.redis_prefix}{secrets.token_hex(3)}:"
    env = {**config.base_env(), "PARLEY_REDIS_KEY_PREFIX": prefix, **QUIET_AUTH_LIMITS}
    stack = Stack(manager, config, prefix, env)
    _, stack.provider_url = start_fake_provider(manager, *provider_args)
    if with_chat:
        chat_port = free_port()
        stack.extra["chat"] = manager.spawn(
            "chat",
            [venv_command("parley-chat-api")],
            {
                **env,
                "PARLEY_HTTP_PORT": str(chat_port),
                "PARLEY_OPENAI_BASE_URL": stack.provider_url + "/v1",
                "PARLEY_OPENAI_API_KEY": "test-provider-key",
            },
            ready_url=f"http://127.0.0.1:{chat_port}/readyz",
        )
        stack.chat_url = f"http://127.0.0.1:{chat_port}"
    if with_ledger:  # chat's outbox relay and the usage worker: every call lands in usage.ledger
        relay = manager.spawn("chat-relay", [venv_command("parley-chat-relay")], env)
        relay.wait_for_log("relay.connected")
        worker = manager.spawn(
            "usage-worker", [venv_command("parley-usage-worker")], {**env, "PARLEY_WORKER_CONCURRENCY": "2"}
        )
        worker.wait_for_log(r"ready\.$", timeout=60)
        stack.extra.update({"chat-relay": relay, "usage-worker": worker})
    stack.env["PARLEY_CHAT_URL"] = stack.chat_url or "http://127.0.0.1:9"
    stack.env.update(gateway_env)
    if seeded:
        stack.seed_quota_counters()
    for i in range(gateways):
        stack.start_gateway(f"gateway{i}")
    return stack


def wait_until(check: Any, timeout: float = 15.0, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")


CHAT_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "say something short"}]}
