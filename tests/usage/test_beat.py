"""parley-usage-beat as a real process (with a private Redis it may lose): partition maintenance and its
gauges, quota counters reconciled from the ledger and re-seeded after Redis lost its data, provider drift."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from parley_common.db.engine import create_async_db_engine
from parley_common.events import TokensConsumedV1
from parley_common.quota import seeded_key, used_key
from parley_common.testing import rabbitmq
from parley_common.testing.net import free_port
from parley_common.testing.processes import ManagedProcess, ProcessManager, venv_command
from parley_common.testing.services import TestServices as Services
from parley_usage.ledger import record_batch

from tests.support.metrics import metric
from tests.support.platform import PlatformConfig
from tests.usage.support import PrivateRedis, count_lines, rows, usage_event, wait_until


def write(database_url: str, events: list[TokensConsumedV1]) -> None:
    async def go() -> None:
        engine = create_async_db_engine(database_url, application_name="tests.beat", pool_size=1)
        try:
            await record_batch(engine, events)
        finally:
            await engine.dispose()

    asyncio.run(go())


@dataclass
class Beat:
    process: ManagedProcess
    redis: PrivateRedis
    prefix: str
    metrics: str
    env: dict[str, str]

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url, socket_timeout=2)


@pytest.fixture(scope="module")
def beat(
    platform_config: PlatformConfig,
    parley_services: Services,
    ledger_partitions: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Beat]:
    manager = ProcessManager(tmp_path_factory.mktemp("usage-beat"))
    vhost = f"{platform_config.redis_prefix.rstrip(':')}b{secrets.token_hex(3)}"
    try:
        amqp_url = rabbitmq.create_vhost(parley_services.rabbitmq_url, vhost)
        private = PrivateRedis(manager)
        private.start()
        port = free_port()
        prefix = f"t{secrets.token_hex(4)}:"
        env = {
            **platform_config.base_env(),
            "PARLEY_RABBITMQ_URL": amqp_url,
            "PARLEY_REDIS_URL": private.url,
            "PARLEY_REDIS_KEY_PREFIX": prefix,
            "PARLEY_METRICS_PORT": str(port),
            "PARLEY_USAGE_SEED_CHECK_INTERVAL": "1",
            "PARLEY_USAGE_RECONCILE_INTERVAL": "2",
            "PARLEY_USAGE_DRIFT_INTERVAL": "2",
        }
        process = manager.spawn("usage-beat", [venv_command("parley-usage-beat")], env)
        process.wait_for_log(r"ready\.$", timeout=120)
        yield Beat(process, private, prefix, f"http://127.0.0.1:{port}/metrics", env)
    finally:
        manager.stop_all()
        rabbitmq.delete_vhost(vhost)


class TestPartitionMaintenance:
    def test_partitions_are_kept_ahead_and_the_gauges_say_so(self, beat: Beat) -> None:
        beat.process.wait_for_log(
            lambda r: r.get("event") == "job.done" and r.get("job") == "usage.maintain_partitions", timeout=60
        )
        assert metric(beat.metrics, "parley_usage_ledger_future_partitions") >= 3
        assert metric(beat.metrics, "parley_usage_ledger_partition_shortfall") == 0
        assert (
            metric(
                beat.metrics,
                "parley_usage_maintenance_last_success_timestamp_seconds",
                job="usage.maintain_partitions",
            )
            > 0
        )
        assert metric(beat.metrics, "parley_usage_maintenance_failures_total") == 0


class TestQuotaCounters:
    def test_counters_are_raised_to_the_ledger_never_lowered(
        self, beat: Beat, ledger_partitions: str
    ) -> None:
        low, high, missing = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        now = datetime.now(UTC)
        client = beat.client()
        client.set(used_key(beat.prefix, low, "day", now), 10)
        client.set(used_key(beat.prefix, high, "day", now), 10**9)
        write(
            ledger_partitions,
            [
                usage_event(low, 1, prompt=300, completion=33),
                usage_event(high, 2, prompt=300, completion=33),
                usage_event(missing, 3, prompt=1000, completion=1),
            ],
        )
        wait_until(
            lambda: client.get(used_key(beat.prefix, low, "day", now)) == b"333", timeout=30, what="raised"
        )
        wait_until(lambda: client.get(used_key(beat.prefix, missing, "month", now)) == b"1001", timeout=30)
        assert client.get(used_key(beat.prefix, high, "day", now)) == str(10**9).encode()
        assert client.get(used_key(beat.prefix, missing, "day", now)) == b"1001"
        assert (
            client.ttl(used_key(beat.prefix, missing, "day", now)) > 0
        )  # created here: expires after its day
        assert client.exists(seeded_key(beat.prefix))

    def test_redis_losing_its_data_is_detected_and_the_counters_reseeded(
        self, beat: Beat, ledger_partitions: str, figures: list[str]
    ) -> None:
        user = uuid.uuid4()
        now = datetime.now(UTC)
        write(ledger_partitions, [usage_event(user, 1, prompt=500, completion=55)])
        client = beat.client()
        key = used_key(beat.prefix, user, "day", now)
        wait_until(lambda: client.get(key) == b"555" and client.exists(seeded_key(beat.prefix)), timeout=30)
        seen = count_lines(beat.process, "^quota.reseeded$")

        beat.redis.lose_everything()
        lost_at = datetime.now(UTC)
        client = beat.client()
        assert client.get(key) is None
        wait_until(lambda: client.exists(seeded_key(beat.prefix)), timeout=30, what="the seeded marker back")
        detected_in = (datetime.now(UTC) - lost_at).total_seconds()
        figures.append(
            f"Redis lost its data: counters re-seeded and marker set again within {detected_in:.1f} s"
        )
        assert client.get(key) == b"555"
        assert count_lines(beat.process, "^quota.reseeded$") > seen
        assert metric(beat.metrics, "parley_usage_quota_reseeds_total") >= 1
        assert metric(beat.metrics, "parley_usage_quota_seeded") == 1


def import_provider_usage(env: dict[str, str], path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [venv_command("parley-usage-import-provider-usage"), str(path), *args],
        env={**env, "PARLEY_LOG_LEVEL": "WARNING"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class TestProviderDrift:
    def test_imported_provider_usage_is_compared_with_the_ledger(
        self, beat: Beat, ledger_partitions: str, tmp_path: Path
    ) -> None:
        provider = f"acme{secrets.token_hex(3)}"
        today = datetime.now(UTC).date()
        write(
            ledger_partitions,
            [
                usage_event(uuid.uuid4(), n, prompt=100, completion=100, provider=provider, model=m)
                for n, m in enumerate(["a", "a", "b"])
            ],
        )  # the ledger: 600 tokens today
        export = tmp_path / "export.csv"
        export.write_text(
            "day,provider,model,prompt_tokens,completion_tokens,requests\n"
            f"{today},{provider},a,300,200,2\n"
            f"{today},{provider},b,100,50,1\n"
        )  # the provider: 650
        done = import_provider_usage(beat.env, export)
        assert done.returncode == 0, done.stderr
        assert "imported 2" in done.stdout

        labels = {"provider": provider, "day": today.isoformat()}
        wait_until(
            lambda: metric(beat.metrics, "parley_usage_provider_drift_tokens", **labels) == 50, timeout=30
        )
        assert metric(beat.metrics, "parley_usage_provider_drift_ratio", **labels) == pytest.approx(50 / 600)

    def test_an_openai_usage_page_is_understood_and_a_bad_file_imports_nothing(
        self, beat: Beat, ledger_partitions: str, tmp_path: Path
    ) -> None:
        provider = f"oai{secrets.token_hex(3)}"
        start = int(datetime(2026, 2, 3, tzinfo=UTC).timestamp())
        page = {
            "object": "page",
            "data": [
                {
                    "object": "bucket",
                    "start_time": start,
                    "end_time": start + 86400,
                    "results": [
                        {
                            "object": "organization.usage.completions.result",
                            "model": "gpt-4o",
                            "input_tokens": 7,
                            "output_tokens": 3,
                            "num_model_requests": 2,
                        },
                        {
                            "object": "organization.usage.completions.result",
                            "model": "gpt-4o",
                            "input_tokens": 1,
                            "output_tokens": 1,
                            "num_model_requests": 1,
                        },
                    ],
                }
            ],
        }
        path = tmp_path / "usage.json"
        path.write_text(json.dumps(page))
        done = import_provider_usage(beat.env, path, "--format", "openai-usage", "--provider", provider)
        assert done.returncode == 0, done.stderr
        got = rows(
            ledger_partitions,
            "SELECT day, model, prompt_tokens, completion_tokens, requests FROM usage.provider_usage WHERE provider = :p",
            p=provider,
        )
        assert [tuple(r) for r in got] == [(datetime(2026, 2, 3).date(), "gpt-4o", 8, 4, 3)]

        bad = tmp_path / "bad.csv"
        bad.write_text(
            f"day,provider,model,prompt_tokens,completion_tokens\n2026-02-04,{provider},x,5,5\nnot-a-day,{provider},y,1,1\n"
        )
        failed = import_provider_usage(beat.env, bad)
        assert failed.returncode == 1
        assert "record 2" in failed.stderr
        assert (
            rows(
                ledger_partitions,
                "SELECT 1 FROM usage.provider_usage WHERE provider = :p AND model IN ('x', 'y')",
                p=provider,
            )
            == []
        )
