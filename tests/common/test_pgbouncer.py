"""Parley's engines work through PgBouncer in transaction mode (no prepared statements, no session state).

A private PgBouncer is started on a free port, in front of the test database, with a pool of one server
connection, so consecutive transactions of different clients share it, which is exactly where prepared
statements break.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from parley_common.db.engine import create_async_db_engine, create_sync_db_engine
from parley_common.testing.net import free_port, tcp_open
from parley_common.testing.processes import ProcessManager
from sqlalchemy import text
from sqlalchemy.engine import make_url

from tests.support.api import eventually


@pytest.fixture
def pgbouncer_url(database_url: str, processes: ProcessManager) -> Iterator[str]:
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    assert os.path.exists(binary), (
        "pgbouncer is not installed: run `make helm-tools` (deploy/scripts/install_tools.sh)"
    )
    url = make_url(database_url)
    port = free_port()
    # Not under pytest's tmp_path: its parents are private to root, and PgBouncer runs as postgres.
    workdir = Path(tempfile.mkdtemp(prefix="parley-pgbouncer-"))
    config = workdir / "pgbouncer.ini"
    config.write_text(
        f"[databases]\n* = host={url.host or '127.0.0.1'} port={url.port or 5432}\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nauth_type = trust\n"
        f"auth_file = {workdir / 'users.txt'}\npool_mode = transaction\ndefault_pool_size = 1\n"
        f"max_client_conn = 100\nunix_socket_dir =\nlogfile = {workdir / 'pgbouncer.log'}\n"
        f"pidfile = {workdir / 'pgbouncer.pid'}\n"
    )
    (workdir / "users.txt").write_text(f'"{url.username or "postgres"}" ""\n')
    workdir.chmod(0o777)
    for path in (config, workdir / "users.txt"):
        path.chmod(0o644)
    args = [binary, str(config)] if os.getuid() != 0 else [binary, "-u", "postgres", str(config)]
    processes.spawn("pgbouncer", args)
    eventually(lambda: tcp_open("127.0.0.1", port), timeout=10, what="pgbouncer listening")
    try:
        yield url.set(port=port, host="127.0.0.1").render_as_string(hide_password=False)
    finally:
        processes.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


def test_sync_and_async_engines_through_transaction_pooling(pgbouncer_url: str) -> None:
    # Two engines (two client pools) share PgBouncer's single server connection; psycopg would prepare a
    # statement after 5 executions by default, and the next client on that connection would then fail.
    sync_a = create_sync_db_engine(pgbouncer_url, application_name="test.a")
    sync_b = create_sync_db_engine(pgbouncer_url, application_name="test.b")
    try:
        for i in range(20):
            for engine in (sync_a, sync_b):
                with engine.begin() as conn:
                    assert conn.execute(text("SELECT :n + 1"), {"n": i}).scalar_one() == i + 1
    finally:
        sync_a.dispose()
        sync_b.dispose()

    async def run_async() -> list[int]:
        engines = [create_async_db_engine(pgbouncer_url, application_name=f"test.async{n}") for n in range(2)]
        try:

            async def work(n: int) -> int:
                async with engines[n % 2].begin() as conn:
                    return int((await conn.execute(text("SELECT :n * 2"), {"n": n})).scalar_one())

            return await asyncio.gather(*(work(n) for n in range(40)))
        finally:
            for engine in engines:
                await engine.dispose()

    assert asyncio.run(run_async()) == [n * 2 for n in range(40)]
