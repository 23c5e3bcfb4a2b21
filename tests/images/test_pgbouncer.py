"""Parley through a real PgBouncer in transaction pooling mode, as global.database.pgbouncer sets it up:
one chat completion travels gateway -> chat -> outbox relay -> RabbitMQ -> usage worker -> ledger with
every process's database traffic pooled per transaction (a prepared statement, a session SET or a
session advisory lock would break here), and the migration path works through it too."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from parley_common.testing.net import free_port, tcp_open
from parley_common.testing.processes import ProcessManager
from sqlalchemy.engine import make_url

from tests.support.api import eventually, register_and_login
from tests.support.db import ledger_rows
from tests.support.platform import PlatformConfig, start_platform


@pytest.fixture
def pgbouncer(database_url: str) -> Iterator[str]:
    """A private PgBouncer (pool_mode = transaction) in front of the test PostgreSQL; yields the session
    database's URL through it. Runs as the postgres user (PgBouncer refuses root); stopped by PID."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).exists():
        pytest.fail("pgbouncer is missing: make helm-tools installs it", pytrace=False)
    direct = make_url(database_url)
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="parley-pgbouncer-"))
    workdir.chmod(0o755)
    (workdir / "users.txt").write_text(f'"{direct.username}" ""\n')
    (workdir / "pgbouncer.ini").write_text(
        f"[databases]\n* = host={direct.host} port={direct.port or 5432}\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {workdir / 'users.txt'}\n"
        f"pool_mode = transaction\ndefault_pool_size = 20\nmax_client_conn = 500\nadmin_users = {direct.username}\n"
    )
    for path in workdir.iterdir():
        path.chmod(0o644)
    log = (workdir / "pgbouncer.log").open("wb")
    user = "postgres" if os.geteuid() == 0 else None
    process = subprocess.Popen(
        [binary, str(workdir / "pgbouncer.ini")], user=user, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        eventually(
            lambda: process.poll() is None and tcp_open("127.0.0.1", port), timeout=15, what="pgbouncer"
        )
        yield direct.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


def test_migrations_and_the_database_wait_work_through_pgbouncer(pgbouncer: str) -> None:
    env = {**os.environ, "PARLEY_DATABASE_URL": pgbouncer, "PARLEY_ENV": "test"}
    waited = subprocess.run(
        [sys.executable, "-m", "parley_common.db.wait", "--timeout", "10"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert waited.returncode == 0, waited.stdout
    # Already at head: this proves Alembic's connection, lock and version check survive transaction pooling.
    migrated = subprocess.run(
        [str(Path(sys.executable).parent / "parley-usage-migrate")],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr


def test_a_completion_reaches_the_ledger_with_every_process_behind_pgbouncer(
    pgbouncer: str,
    database_url: str,
    fresh_amqp_url: str,
    redis_url: str,
    redis_prefix: str,
    signing_key_pem: str,
    processes: ProcessManager,
) -> None:
    config = PlatformConfig(
        database_url=pgbouncer,
        amqp_url=fresh_amqp_url,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        signing_key_pem=signing_key_pem,
    )
    platform = start_platform(processes, config)
    user_id, token = register_and_login(platform.gateway_url)
    client = openai.OpenAI(base_url=platform.api_url, api_key=token, max_retries=0)
    for _ in range(3):
        completion = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "say something"}]
        )
        assert completion.usage is not None
    # Read straight from PostgreSQL: three rows, each once.
    rows = eventually(
        lambda: (r := ledger_rows(database_url, user_id)) and len(r) >= 3 and r, what="ledger rows"
    )
    assert len(rows) == 3
    assert len({row["event_id"] for row in rows}) == 3
    # And the traffic really went through the pooler, in transaction mode.
    assert bouncer_show(pgbouncer, "CONFIG")["pool_mode"] == "transaction"
    database = make_url(database_url).database
    stats = [line.split("|") for line in bouncer_lines(pgbouncer, "STATS") if line.split("|")[0] == database]
    assert stats
    assert int(stats[0][1]) > 20  # total_xact_count: every process's transactions


def bouncer_lines(url: str, command: str) -> list[str]:
    """Rows of PgBouncer's admin console (which speaks only the simple query protocol: psql, not psycopg)."""
    parts = make_url(url)
    result = subprocess.run(
        ["psql", "-h", str(parts.host), "-p", str(parts.port), "-U", str(parts.username), "-At", "pgbouncer",
         "-c", f"SHOW {command}"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return result.stdout.splitlines()


def bouncer_show(url: str, command: str) -> dict[str, str]:
    return {line.split("|")[0]: line.split("|")[1] for line in bouncer_lines(url, command)}
