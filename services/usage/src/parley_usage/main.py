"""Entry points: ``parley-usage-worker``, ``-beat``, ``-api``, ``-relay``, ``-migrate``,
``-import-provider-usage``."""

from __future__ import annotations

import os
import tempfile


def worker() -> None:
    # Set before prometheus_client is imported, so every consumer child writes its metrics where the
    # supervisor (which serves /metrics) reads them; children inherit the variable.
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="parley-usage-metrics-"))
    from parley_usage.config import get_settings
    from parley_usage.worker import run

    run(get_settings())


def beat() -> None:
    from parley_usage.beat import run

    run()


def api() -> None:
    from parley_common.api import serve

    from parley_usage.config import get_settings

    serve("parley_usage.app:create_app", "usage", get_settings())


def relay() -> None:
    from parley_common.messaging.relay import run_relay_process

    from parley_usage.config import get_settings
    from parley_usage.models import OutboxMessage

    run_relay_process("usage", get_settings(), OutboxMessage.outbox_table())


def migrate() -> None:
    from parley_common.db.migrations import upgrade

    from parley_usage.config import get_settings
    from parley_usage.models import SCHEMA

    upgrade("parley_usage", get_settings().database_url.get_secret_value(), SCHEMA)


def import_provider_usage() -> None:
    from parley_usage.drift import import_main

    import_main()
