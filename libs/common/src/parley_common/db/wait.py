"""Wait until PostgreSQL accepts connections: ``python -m parley_common.db.wait --timeout 300``.

The Helm migration Job runs this as its init container, so Alembic starts only once the database answers
(a managed database still booting, a PgBouncer not yet ready) instead of failing the release at once. It
exits 0 when ``SELECT 1`` succeeds and 1 when ``--timeout`` seconds pass first. The URL comes from
``PARLEY_DATABASE_URL``, as for every other process; errors are logged by type, never with the URL.
"""

from __future__ import annotations

import argparse
import time

from sqlalchemy import create_engine, pool, text

from parley_common.db.engine import connect_args
from parley_common.logs import get_logger
from parley_common.process import init_process
from parley_common.settings import DatabaseSettings, ParleySettings, load_settings

log = get_logger("parley.db.wait")


class WaitSettings(ParleySettings, DatabaseSettings):
    """The settings the wait reads: the database URL, plus logging."""


def wait_for_database(url: str, *, timeout: float, application_name: str = "parley.wait") -> bool:
    """Try ``SELECT 1`` with backoff (0.5 s doubling to 5 s) until it works or ``timeout`` passes."""
    engine = create_engine(
        url, poolclass=pool.NullPool, connect_args={**connect_args(application_name), "connect_timeout": 5}
    )
    deadline = time.monotonic() + timeout
    delay = 0.5
    attempt = 0
    try:
        while True:
            attempt += 1
            try:
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
                log.info("database.ready", attempts=attempt)
                return True
            except Exception as exc:  # noqa: BLE001 - refused, DNS not yet resolvable, auth not yet set up...
                remaining = deadline - time.monotonic()
                log.warning("database.not_ready", attempt=attempt, error=type(exc).__name__)
                if remaining <= 0:
                    return False
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 5.0)
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait before giving up")
    parser.add_argument("--service", default="parley", help="service name for the log lines")
    args = parser.parse_args(argv)
    settings = load_settings(WaitSettings)
    init_process(args.service, "wait-for-database", settings)
    ok = wait_for_database(
        settings.database_url.get_secret_value(),
        timeout=args.timeout,
        application_name=f"{args.service}.wait",
    )
    if not ok:
        log.error("database.wait_timed_out", timeout=args.timeout)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
