"""Health and metrics over HTTP for processes that have no HTTP server of their own.

Celery workers, beat and outbox relays call :func:`serve_health` at start-up. A daemon thread then answers
the same paths, with the same bodies, as the HTTP services' routes in :mod:`parley_common.http`, so the Helm
charts probe every Parley process alike:

- ``GET /livez``: 200 while the process runs;
- ``GET /readyz``: 200 when every readiness check passes, else 503 problem+json naming the failing checks;
- ``GET /metrics``: Prometheus text (multiprocess-aware, so prefork children are counted).

A readiness check is a plain callable run in the server's thread pool: it passes when it returns anything
but ``False`` within the timeout, and fails when it raises, returns ``False`` or takes too long. Checks are
added while the process starts (a worker is ready once its consumer is connected; see
:func:`parley_common.messaging.worker.run_worker`), so a process that has not registered its checks yet
reports not ready rather than ready.

This module imports neither FastAPI nor Celery: it runs in every image.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from parley_common.logs import get_logger
from parley_common.metrics import render_latest

log = get_logger("parley.health")

HealthCheck = Callable[[], object]

# Same problem "type" base as parley_common.errors (which needs FastAPI, absent from worker images).
_PROBLEM_TYPE = "https://parley.dev/problems/not_ready"
_STARTING = "starting"


class HealthServer:
    """``/livez``, ``/readyz`` and ``/metrics`` on one port, served from daemon threads."""

    def __init__(self, port: int, addr: str = "0.0.0.0", *, timeout: float = 2.0) -> None:
        self.timeout = timeout
        self._checks: dict[str, HealthCheck] = {}
        self._ready_gate = threading.Event()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="parley-health-check")
        self._server = ThreadingHTTPServer((addr, port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="parley-health", daemon=True)

    @property
    def port(self) -> int:
        """The bound port (useful when started on port 0)."""
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def add_check(self, name: str, check: HealthCheck) -> None:
        """Register (or replace) a readiness check."""
        with self._lock:
            self._checks[name] = check

    def set_started(self, started: bool = True) -> None:
        """Mark start-up finished (or, with ``False``, shutting down): until then ``/readyz`` answers 503."""
        if started:
            self._ready_gate.set()
        else:
            self._ready_gate.clear()

    def readiness(self) -> dict[str, str]:
        """Run every check; ``{name: "ok" | "failing"}``, with ``starting`` failing until start-up ends."""
        with self._lock:
            checks = dict(self._checks)
        results: dict[str, str] = {}
        if not self._ready_gate.is_set():
            results[_STARTING] = "failing"
        futures = {name: self._pool.submit(check) for name, check in checks.items()}
        for name, future in futures.items():
            try:
                passed = future.result(timeout=self.timeout) is not False
            except FutureTimeout:
                passed = False
                log.warning("health.check_failed", check=name, error="Timeout")
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready"; the reason is logged
                passed = False
                log.warning("health.check_failed", check=name, error=type(exc).__name__)
            results[name] = "ok" if passed else "failing"
        return results


def _problem(results: dict[str, str]) -> dict[str, Any]:
    failing = sorted(name for name, value in results.items() if value != "ok")
    return {
        "type": _PROBLEM_TYPE,
        "title": HTTPStatus.SERVICE_UNAVAILABLE.phrase,
        "status": 503,
        "detail": "Failing dependencies: " + ", ".join(failing),
        "checks": results,
    }


def _handler_for(server: HealthServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "parley-health"
        sys_version = ""

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/livez":
                self._send(200, "application/json", json.dumps({"status": "ok"}).encode())
            elif path == "/readyz":
                results = server.readiness()
                if all(value == "ok" for value in results.values()):
                    body = json.dumps({"status": "ok", "checks": results}).encode()
                    self._send(200, "application/json", body)
                else:
                    self._send(503, "application/problem+json", json.dumps(_problem(results)).encode())
            elif path == "/metrics":
                body, content_type = render_latest()
                self._send(200, content_type, body)
            else:
                self._send(404, "application/json", b'{"status": "not found"}')

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            # Probes arrive every few seconds: no access log.
            return

    return Handler


def metrics_port(settings: object) -> int | None:
    """``settings.metrics_port`` when the settings class has one, else ``PARLEY_METRICS_PORT``.

    Relays run with their service's settings, which need not declare the field.
    """
    port = getattr(settings, "metrics_port", None)
    if port is not None:
        return int(port)
    raw = os.environ.get("PARLEY_METRICS_PORT", "").strip()
    return int(raw) if raw else None


def settings_checks(settings: object, *, name: str = "parley") -> dict[str, HealthCheck]:
    """Readiness checks for the database and Redis that ``settings`` configures (none for the others).

    Each check opens a connection, makes one round trip and closes it: nothing stays open that a Celery
    prefork child could inherit, and a check never borrows from the process's own pool.
    """
    from parley_common.settings import DatabaseSettings, RedisSettings

    checks: dict[str, HealthCheck] = {}
    if isinstance(settings, DatabaseSettings):
        from sqlalchemy import create_engine, pool, text

        from parley_common.db.engine import connect_args

        engine = create_engine(
            settings.database_url.get_secret_value(),
            poolclass=pool.NullPool,
            connect_args={**connect_args(f"{name}.health"), "connect_timeout": 2},
        )

        def database() -> None:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))

        checks["database"] = database
    if isinstance(settings, RedisSettings):
        url = settings.redis_url.get_secret_value()
        timeout = settings.redis_connect_timeout + settings.redis_command_timeout

        def redis() -> None:
            import redis as redis_lib

            client = redis_lib.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
            try:
                client.ping()
            finally:
                client.close()

        checks["redis"] = redis
    return checks


def serve_health(port: int, addr: str = "0.0.0.0", *, timeout: float = 2.0) -> HealthServer:
    """Start a :class:`HealthServer` on ``port`` in the background and return it.

    The caller registers readiness checks with :meth:`HealthServer.add_check` and calls
    :meth:`HealthServer.set_started` once the process does its work (consumes, relays).
    """
    server = HealthServer(port, addr, timeout=timeout).start()
    log.info("health.serving", port=server.port)
    return server
