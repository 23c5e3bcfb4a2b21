"""Entry points: ``parley-chat-api``, ``parley-chat-relay``, ``parley-chat-worker``, ``parley-chat-migrate``."""

from __future__ import annotations

import os
import tempfile

from parley_common.api import serve as serve_http
from parley_common.db.migrations import upgrade

from parley_chat.config import get_settings
from parley_chat.models import SCHEMA


def serve() -> None:
    serve_http("parley_chat.app:create_app", "chat", get_settings())


def relay() -> None:
    from parley_common.messaging.relay import run_relay_process

    from parley_chat.models import OutboxMessage

    run_relay_process("chat", get_settings(), OutboxMessage.outbox_table())


def migrate() -> None:
    upgrade("parley_chat", get_settings().database_url.get_secret_value(), SCHEMA)


def worker() -> None:
    # Set before prometheus_client is imported, so every consumer child writes its metrics where the
    # supervisor (which serves /metrics) reads them; children inherit the variable.
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="parley-chat-metrics-"))
    from parley_chat.erasure import run

    run(get_settings())
