"""Start Parley's processes as real subprocesses on free loopback ports."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from parley_common.auth.keys import jwks_document, load_signing_keys
from parley_common.testing.net import free_port
from parley_common.testing.processes import ManagedProcess, ProcessManager, venv_command


@dataclass(frozen=True)
class PlatformConfig:
    database_url: str
    amqp_url: str
    redis_url: str
    redis_prefix: str
    signing_key_pem: str

    def base_env(self) -> dict[str, str]:
        return {
            "PARLEY_ENV": "test",
            "PARLEY_LOG_LEVEL": "INFO",
            "PARLEY_DATABASE_URL": self.database_url,
            "PARLEY_RABBITMQ_URL": self.amqp_url,
            "PARLEY_REDIS_URL": self.redis_url,
            "PARLEY_REDIS_KEY_PREFIX": self.redis_prefix,
            "PARLEY_JWT_PRIVATE_KEYS": self.signing_key_pem,
            "PARLEY_INTERNAL_JWKS": json.dumps(jwks_document(load_signing_keys(self.signing_key_pem))),
        }


@dataclass
class Platform:
    gateway_url: str
    chat_url: str
    provider_url: str
    processes: dict[str, ManagedProcess] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return self.gateway_url + "/v1"


def start_fake_provider(
    manager: ProcessManager, *args: str, name: str = "provider", port: int | None = None
) -> tuple[ManagedProcess, str]:
    port = port or free_port()
    process = manager.spawn(
        name,
        [venv_command("parley-fake-provider"), "--port", str(port), *args],
        ready_url=f"http://127.0.0.1:{port}/livez",
    )
    return process, f"http://127.0.0.1:{port}"


def start_platform(
    manager: ProcessManager,
    config: PlatformConfig,
    *,
    provider_args: tuple[str, ...] = (),
    with_usage_worker: bool = True,
    with_relay: bool = True,
    chat_env: dict[str, str] | None = None,
    provider_port: int | None = None,
) -> Platform:
    """``chat_env`` adds to (or overrides) chat's environment, e.g. ``PARLEY_PROVIDERS`` for a routing
    table over several fake providers started with :func:`start_fake_provider` on the same manager."""
    env = config.base_env()
    provider, provider_url = start_fake_provider(manager, *provider_args, port=provider_port)
    chat_port, gateway_port = free_port(), free_port()
    chat = manager.spawn(
        "chat",
        [venv_command("parley-chat-api")],
        {
            **env,
            "PARLEY_HTTP_PORT": str(chat_port),
            "PARLEY_OPENAI_BASE_URL": provider_url + "/v1",
            "PARLEY_OPENAI_API_KEY": "test-provider-key",
            **(chat_env or {}),
        },
        ready_url=f"http://127.0.0.1:{chat_port}/readyz",
    )
    gateway = manager.spawn(
        "gateway",
        [venv_command("parley-gateway-api")],
        {
            **env,
            "PARLEY_HTTP_PORT": str(gateway_port),
            "PARLEY_CHAT_URL": f"http://127.0.0.1:{chat_port}",
            # The suite's own traffic: many accounts from 127.0.0.1, many calls per account. The gateway's
            # tests set plans and attempt limits explicitly.
            "PARLEY_SIGNUP_PLAN": "enterprise",
            "PARLEY_AUTH_IP_PER_MINUTE": "100000",
            "PARLEY_AUTH_EMAIL_PER_MINUTE": "100000",
        },
        ready_url=f"http://127.0.0.1:{gateway_port}/readyz",
    )
    platform = Platform(
        gateway_url=f"http://127.0.0.1:{gateway_port}",
        chat_url=f"http://127.0.0.1:{chat_port}",
        provider_url=provider_url,
        processes={"provider": provider, "chat": chat, "gateway": gateway},
    )
    if with_relay:
        platform.processes["relay"] = manager.spawn("relay", [venv_command("parley-chat-relay")], env)
        platform.processes["relay"].wait_for_log("relay.connected")
    if with_usage_worker:
        worker = manager.spawn(
            "usage-worker", [venv_command("parley-usage-worker")], {**env, "PARLEY_WORKER_CONCURRENCY": "2"}
        )
        worker.wait_for_log(r"ready\.$")
        platform.processes["usage-worker"] = worker
    return platform
