"""Health endpoints of processes without an HTTP API: not ready while a dependency is missing, alive
all the same; and the migration Job's wait for PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import httpx
from parley_common.health import HealthServer
from parley_common.testing.net import free_port
from parley_common.testing.processes import ProcessManager, venv_command

from tests.support.platform import PlatformConfig

CLOSED = "127.0.0.1:{port}"  # a port nobody listens on


def wait_for_status(url: str, status: int, timeout: float = 30.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last: httpx.Response | None = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(url, timeout=2)
            if last.status_code == status:
                return last
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} never answered {status} (last: {last.status_code if last else 'nothing'})")


class TestNotReadyWhileADependencyIsDown:
    def test_relay_without_its_database_is_alive_but_not_ready(
        self, processes: ProcessManager, platform_config: PlatformConfig, fresh_amqp_url: str
    ) -> None:
        port = free_port()
        dead_database = f"postgresql+psycopg://postgres@{CLOSED.format(port=free_port())}/parley"
        env = {
            **platform_config.base_env(),
            "PARLEY_DATABASE_URL": dead_database,
            "PARLEY_RABBITMQ_URL": fresh_amqp_url,
            "PARLEY_METRICS_PORT": str(port),
        }
        processes.spawn("relay", [venv_command("parley-chat-relay")], env)
        ready = wait_for_status(f"http://127.0.0.1:{port}/readyz", 503)
        assert ready.headers["content-type"] == "application/problem+json"
        body = ready.json()
        assert body["status"] == 503
        assert body["checks"]["database"] == "failing"
        assert "database" in body["detail"]
        assert dead_database not in ready.text  # no URL (nor password) in the answer
        assert httpx.get(f"http://127.0.0.1:{port}/livez", timeout=2).status_code == 200

    def test_worker_without_its_broker_is_alive_but_not_ready(
        self, processes: ProcessManager, platform_config: PlatformConfig, database_url: str
    ) -> None:
        port = free_port()
        env = {
            **platform_config.base_env(),
            "PARLEY_DATABASE_URL": database_url,
            "PARLEY_RABBITMQ_URL": f"amqp://guest:guest@{CLOSED.format(port=free_port())}/",
            "PARLEY_METRICS_PORT": str(port),
        }
        processes.spawn("worker", [sys.executable, "-c", CELERY_WORKER], env)
        live = wait_for_status(f"http://127.0.0.1:{port}/livez", 200)
        assert live.json() == {"status": "ok"}
        # Its checks are registered right after the server starts; then they stay like this, because the
        # consumer never connects: start-up never finishes, while the database itself is fine.
        deadline = time.monotonic() + 30
        while "database" not in (
            checks := httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).json()["checks"]
        ):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert checks == {"starting": "failing", "database": "ok"}
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert ready.status_code == 503
        assert ready.headers["content-type"] == "application/problem+json"

    def test_worker_with_its_broker_becomes_ready(
        self,
        processes: ProcessManager,
        platform_config: PlatformConfig,
        database_url: str,
        fresh_amqp_url: str,
    ) -> None:
        port = free_port()
        env = {
            **platform_config.base_env(),
            "PARLEY_DATABASE_URL": database_url,
            "PARLEY_RABBITMQ_URL": fresh_amqp_url,
            "PARLEY_METRICS_PORT": str(port),
        }
        processes.spawn("worker", [sys.executable, "-c", CELERY_WORKER], env)
        ready = wait_for_status(f"http://127.0.0.1:{port}/readyz", 200)
        assert ready.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}


# A Celery worker exactly as parley_common runs every service's (run_worker), for a settings class with a
# database; it consumes notify's queue here, but any queue would do.
CELERY_WORKER = """
from parley_common.messaging import topology
from parley_common.messaging.worker import WorkerSettings, create_celery_app, run_worker
from parley_common.settings import DatabaseSettings


class Settings(WorkerSettings, DatabaseSettings):
    pass


settings = Settings()
run_worker(create_celery_app("notify", topology.NOTIFY, settings), settings)
"""


class TestHealthServer:
    def test_a_hanging_check_fails_within_the_timeout_instead_of_hanging_the_probe(self) -> None:
        release = threading.Event()
        server = HealthServer(0, "127.0.0.1", timeout=0.3).start()
        try:
            server.add_check("stuck", lambda: release.wait(10))
            server.add_check("fine", lambda: None)
            server.set_started()
            started = time.monotonic()
            response = httpx.get(f"http://127.0.0.1:{server.port}/readyz", timeout=5)
            assert time.monotonic() - started < 2
            assert response.status_code == 503
            assert response.json()["checks"] == {"stuck": "failing", "fine": "ok"}
            release.set()
            assert httpx.get(f"http://127.0.0.1:{server.port}/readyz", timeout=5).status_code == 200
        finally:
            release.set()
            server.stop()

    def test_a_check_returning_false_fails_and_shutdown_turns_ready_off(self) -> None:
        server = HealthServer(0, "127.0.0.1").start()
        try:
            server.add_check("broker", lambda: False)
            server.set_started()
            assert httpx.get(f"http://127.0.0.1:{server.port}/readyz", timeout=5).json()["checks"] == {
                "broker": "failing"
            }
            server.add_check("broker", lambda: True)
            assert httpx.get(f"http://127.0.0.1:{server.port}/readyz", timeout=5).status_code == 200
            server.set_started(False)
            assert httpx.get(f"http://127.0.0.1:{server.port}/readyz", timeout=5).status_code == 503
            assert httpx.get(f"http://127.0.0.1:{server.port}/livez", timeout=5).status_code == 200
            assert httpx.get(f"http://127.0.0.1:{server.port}/nope", timeout=5).status_code == 404
        finally:
            server.stop()


class TestWaitForDatabase:
    def run_wait(self, url: str, timeout: str) -> subprocess.CompletedProcess[str]:
        env = {
            "PARLEY_DATABASE_URL": url,
            "PARLEY_ENV": "prod",
            "PARLEY_LOG_FORMAT": "json",
            "PATH": "/usr/bin:/bin",
        }
        return subprocess.run(
            [sys.executable, "-m", "parley_common.db.wait", "--timeout", timeout, "--service", "chat"],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    def test_returns_at_once_when_the_database_answers(self, database_url: str) -> None:
        result = self.run_wait(database_url, "30")
        assert result.returncode == 0, result.stdout + result.stderr
        assert '"event": "database.ready"' in result.stdout

    def test_fails_after_its_timeout_when_nothing_answers(self) -> None:
        url = f"postgresql+psycopg://parley:hunter2@{CLOSED.format(port=free_port())}/parley"
        started = time.monotonic()
        result = self.run_wait(url, "2")
        assert result.returncode == 1
        assert 2 <= time.monotonic() - started < 30
        assert result.stdout.count('"event": "database.not_ready"') >= 2  # it retried
        assert '"event": "database.wait_timed_out"' in result.stdout
        assert "hunter2" not in result.stdout + result.stderr

    def test_refuses_to_guess_a_database_in_production(self) -> None:
        env = {"PARLEY_ENV": "prod", "PATH": "/usr/bin:/bin"}
        result = subprocess.run(
            [sys.executable, "-m", "parley_common.db.wait", "--timeout", "1"],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode != 0
        assert "PARLEY_DATABASE_URL" in result.stderr


BEAT = """
from parley_common.messaging import topology
from parley_common.messaging.beat import run_beat
from parley_common.messaging.worker import WorkerSettings, create_celery_app

settings = WorkerSettings()
run_beat(create_celery_app("usage", topology.USAGE, settings), settings)
"""


class TestBeat:
    def test_beat_reports_ready_once_scheduling_and_keeps_its_schedule_under_tmp(
        self, processes: ProcessManager, fresh_amqp_url: str, tmp_path
    ) -> None:
        port = free_port()
        env = {
            "PARLEY_RABBITMQ_URL": fresh_amqp_url,
            "PARLEY_METRICS_PORT": str(port),
            "PARLEY_LOG_FORMAT": "json",
            "TMPDIR": str(tmp_path),  # the pod's /tmp emptyDir; the root filesystem is read-only
        }
        beat = processes.spawn("beat", [sys.executable, "-c", BEAT], env)
        ready = wait_for_status(f"http://127.0.0.1:{port}/readyz", 200)
        assert ready.json() == {"status": "ok", "checks": {}}
        assert httpx.get(f"http://127.0.0.1:{port}/livez", timeout=2).status_code == 200
        assert list(tmp_path.glob("parley-usage-celerybeat-schedule*"))
        beat.stop()
        assert beat.popen is not None
        assert beat.popen.returncode == 0
