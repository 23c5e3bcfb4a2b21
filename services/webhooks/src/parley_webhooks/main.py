"""Entry points: ``parley-webhooks-api``, ``-worker``, ``-beat``, ``-relay`` and ``-migrate``."""

from __future__ import annotations

import logging

from parley_webhooks.config import get_settings


def serve() -> None:
    from parley_common.api import serve as serve_http

    serve_http("parley_webhooks.app:create_app", "webhooks", get_settings())


def worker() -> None:
    from parley_common.messaging.worker import run_worker

    from parley_webhooks.worker import app, secret_box, settings

    secret_box()  # a malformed PARLEY_WEBHOOKS_ENCRYPTION_KEYS stops the worker here, not per delivery
    # Two lines per poll (received, succeeded) drown the log; deliveries log their own outcome.
    for name in ("celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Threads, not forked children: a delivery spends its time waiting on someone else's server.
    run_worker(app, settings, extra_args=["--pool", "threads"])


def beat() -> None:
    """Sends ``webhooks.dispatch_due`` every poll interval. Run one; a second one only polls more often."""
    from parley_common.messaging.beat import run_beat

    from parley_webhooks.worker import app, settings

    # One "Sending due task" line per poll says nothing; errors still show.
    logging.getLogger("celery.beat").setLevel(logging.WARNING)
    run_beat(app, settings)


def relay() -> None:
    from parley_common.messaging.relay import run_relay_process

    from parley_webhooks.models import OutboxMessage

    run_relay_process("webhooks", get_settings(), OutboxMessage.outbox_table())


def migrate() -> None:
    """The schema to its newest revision, then every stored secret encrypted under the first key."""
    from parley_common.db.engine import create_sync_db_engine
    from parley_common.db.migrations import upgrade
    from parley_common.process import init_process

    from parley_webhooks.models import SCHEMA
    from parley_webhooks.secret_box import SecretBox, reseal_stored_secrets

    settings = get_settings()
    init_process("webhooks", "migrate", settings)
    box = SecretBox(settings.webhooks_encryption_keys.get_secret_value())
    upgrade("parley_webhooks", settings.database_url.get_secret_value(), SCHEMA)
    engine = create_sync_db_engine(settings.database_url, application_name="webhooks.migrate")
    try:
        reseal_stored_secrets(engine, box)
    finally:
        engine.dispose()
