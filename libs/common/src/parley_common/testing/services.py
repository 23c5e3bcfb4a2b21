"""Where the tests' PostgreSQL, Redis and RabbitMQ are, and proof that they answer.

URLs come from ``PARLEY_TEST_DATABASE_URL`` (a maintenance database the tests may create databases
from), ``PARLEY_TEST_REDIS_URL`` and ``PARLEY_TEST_RABBITMQ_URL``; the defaults are the local services.
When a default does not answer and a Docker engine does, testcontainers starts the service. When neither
works the run fails with a message saying what is missing: a suite that skips everything is not green.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from parley_common.testing.net import url_tcp_open

DEFAULTS = {
    "PARLEY_TEST_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    "PARLEY_TEST_REDIS_URL": "redis://127.0.0.1:6379/0",
    "PARLEY_TEST_RABBITMQ_URL": "amqp://guest:guest@127.0.0.1:5672/",
}
PORTS = {"PARLEY_TEST_DATABASE_URL": 5432, "PARLEY_TEST_REDIS_URL": 6379, "PARLEY_TEST_RABBITMQ_URL": 5672}


class ServicesMissing(RuntimeError):
    pass


@dataclass
class TestServices:
    database_url: str
    redis_url: str
    rabbitmq_url: str
    containers: list[Any] = field(default_factory=list)

    @property
    def rabbitmq_is_local(self) -> bool:
        return (urlsplit(self.rabbitmq_url).hostname or "") in ("127.0.0.1", "localhost", "::1")

    def stop(self) -> None:
        for container in self.containers:
            container.stop()


def _docker_available() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:  # noqa: BLE001 - no engine, no socket, no permission: all mean no Docker
        return False


def _start_container(var: str) -> tuple[str, Any]:
    if var == "PARLEY_TEST_DATABASE_URL":
        from testcontainers.postgres import PostgresContainer

        pg = PostgresContainer("postgres:15", driver="psycopg").start()
        return pg.get_connection_url(), pg
    if var == "PARLEY_TEST_REDIS_URL":
        from testcontainers.redis import RedisContainer

        redis = RedisContainer("redis:7").start()
        return f"redis://{redis.get_container_host_ip()}:{redis.get_exposed_port(6379)}/0", redis
    from testcontainers.rabbitmq import RabbitMqContainer

    rabbit = RabbitMqContainer("rabbitmq:3.13-management").start()
    return f"amqp://guest:guest@{rabbit.get_container_host_ip()}:{rabbit.get_exposed_port(5672)}/", rabbit


def discover() -> TestServices:
    urls: dict[str, str] = {}
    containers: list[Any] = []
    missing: list[str] = []
    docker = None
    for var, default in DEFAULTS.items():
        url = os.environ.get(var, default)
        if url_tcp_open(url, PORTS[var]):
            urls[var] = url
            continue
        if var not in os.environ:
            docker = _docker_available() if docker is None else docker
            if docker:
                urls[var], container = _start_container(var)
                containers.append(container)
                continue
        missing.append(f"{var}={url}")
    if missing:
        raise ServicesMissing(
            "required services are not reachable: "
            + ", ".join(missing)
            + ". Start them with `make services-up` (or set the variables to reachable servers)."
        )
    return TestServices(
        urls["PARLEY_TEST_DATABASE_URL"],
        urls["PARLEY_TEST_REDIS_URL"],
        urls["PARLEY_TEST_RABBITMQ_URL"],
        containers,
    )
