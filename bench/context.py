"""What a benchmark gets: isolated real resources, a process manager, and a place for its numbers.

Benchmarks aim only at loopback, are bounded in count and time, and stop every process they started.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parley_common.auth.keys import SigningKey, jwks_document
from parley_common.db.admin import drop_database
from parley_common.db.migrations import registered
from parley_common.testing import rabbitmq, resources
from parley_common.testing.net import free_port
from parley_common.testing.processes import ManagedProcess, ProcessManager, venv_command
from parley_common.testing.services import TestServices, discover

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
    }


@dataclass
class BenchContext:
    name: str
    services: TestServices
    database_url: str
    amqp_url: str
    redis_url: str
    redis_prefix: str
    processes: ProcessManager
    notes: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, name: str) -> BenchContext:
        services = discover()
        tag = resources.new_tag("b")
        resources.drop_stale_databases(services.database_url)
        resources.drop_stale_vhosts()
        database_url = resources.create_database(services.database_url, tag, registered())
        amqp_url = rabbitmq.create_vhost(services.rabbitmq_url, tag)
        logs = ROOT / ".bench" / "logs" / name
        logs.mkdir(parents=True, exist_ok=True)
        return cls(
            name, services, database_url, amqp_url, services.redis_url, f"{tag}:", ProcessManager(logs)
        )

    def service_env(self, key: SigningKey, log_level: str = "WARNING") -> dict[str, str]:
        """What a service process of this run reads: its database, vhost and Redis prefix, and the key
        whose JWKS verifies internal tokens."""
        return {
            "PARLEY_ENV": "test",
            "PARLEY_LOG_LEVEL": log_level,
            "PARLEY_DATABASE_URL": self.database_url,
            "PARLEY_RABBITMQ_URL": self.amqp_url,
            "PARLEY_REDIS_URL": self.redis_url,
            "PARLEY_REDIS_KEY_PREFIX": self.redis_prefix,
            "PARLEY_INTERNAL_JWKS": json.dumps(jwks_document([key])),
        }

    def close(self) -> None:
        self.processes.stop_all()
        drop_database(self.database_url)
        rabbitmq.delete_vhost(self.amqp_url.rsplit("/", 1)[-1])
        resources.delete_redis_prefix(self.redis_url, self.redis_prefix)


def write_results(name: str, results: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **results}, indent=2, sort_keys=True) + "\n")
    return path


# Every limit on, and large enough never to refuse: a benchmark measures the work, not the refusals.
UNLIMITED = {
    "requests_per_minute": 100_000,
    "tokens_per_minute": 1_000_000_000,
    "concurrent_streams": 10_000,
    "daily_token_quota": 10**12,
    "monthly_token_quota": 10**13,
}


def unlimited_account(
    gateway_url: str, env: dict[str, str], redis_url: str, redis_prefix: str
) -> tuple[str, str, dict[str, Any]]:
    """(user id, access token, plan) of a new administrator whose limits never refuse a benchmark's load.

    The quota counters are marked as reconciled (usage's beat would do it in a deployment), so the
    gateway enforces quotas normally instead of applying its Redis-failure policy.
    """
    import subprocess
    import time

    import httpx
    import redis
    from parley_common.quota import seeded_key
    from parley_common.testing.processes import venv_command

    with redis.Redis.from_url(redis_url) as client:
        client.set(seeded_key(redis_prefix), "1")
    email, password = f"bench-{time.time_ns()}@example.com", "bench password"
    with httpx.Client(base_url=gateway_url, timeout=30) as client:
        user_id = client.post("/v1/auth/register", json={"email": email, "password": password}).json()["id"]
        subprocess.run(
            [venv_command("parley-gateway-admin"), "promote", email],
            env={**os.environ, **env},
            check=True,
            timeout=60,
            capture_output=True,
        )
        token = client.post("/v1/auth/login", json={"email": email, "password": password}).json()[
            "access_token"
        ]
        auth = {"authorization": f"Bearer {token}"}
        client.patch(
            f"/v1/admin/users/{user_id}", json={"plan_overrides": UNLIMITED}, headers=auth
        ).raise_for_status()
        plan = client.get("/v1/me", headers=auth).json()["plan"]
    return str(user_id), token, plan


def cpu_seconds(process: ManagedProcess) -> float:
    """User + system CPU time of ``process`` and its children so far."""
    import psutil

    proc = psutil.Process(process.pid)
    total = float(sum(proc.cpu_times()[:2]))
    for child in proc.children(recursive=True):
        total += sum(child.cpu_times()[:2])
    return total


def start_provider_and_chat(ctx: BenchContext, env: dict[str, str]) -> tuple[ManagedProcess, str]:
    """The fake provider (answering at once) and a chat API on it, with ``env``: (chat, chat's URL)."""
    provider_port, chat_port = free_port(), free_port()
    ctx.processes.spawn(
        "provider",
        [venv_command("parley-fake-provider"), "--port", str(provider_port)],
        ready_url=f"http://127.0.0.1:{provider_port}/livez",
    )
    chat = ctx.processes.spawn(
        "chat",
        [venv_command("parley-chat-api")],
        {
            **env,
            "PARLEY_HTTP_PORT": str(chat_port),
            "PARLEY_OPENAI_BASE_URL": f"http://127.0.0.1:{provider_port}/v1",
            "PARLEY_OPENAI_API_KEY": "bench",
        },
        ready_url=f"http://127.0.0.1:{chat_port}/readyz",
    )
    return chat, f"http://127.0.0.1:{chat_port}"
