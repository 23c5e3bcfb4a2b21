"""Entry points: ``parley-webhooks-api``, ``-worker``, ``-beat``, ``-relay`` and ``-migrate``."""

from __future__ import annotations

import logging

from parley_webhooks.config import get_settings


def serve() -> None:
    from parley_common.api import serve as serve_http

    serve_http("parley_webhooks.app:create_app", "webhooks", get_settings())


def worker() -> None:
    from parley_common.messaging.worker import run_worker

    from parley_webhooks.worker import app, settings

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
    from parley_common.db.migrations import upgrade

    from parley_webhooks.models import SCHEMA

    upgrade("parley_webhooks", get_settings().database_url.get_secret_value(), SCHEMA)
