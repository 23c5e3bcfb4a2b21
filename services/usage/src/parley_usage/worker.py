"""The usage Celery app and its event handlers (``parley-usage-worker``)."""

from __future__ import annotations

from functools import cache

from parley_common.db.engine import create_sync_db_engine
from parley_common.events import TokensConsumedV1
from parley_common.logs import get_logger
from parley_common.messaging import topology
from parley_common.messaging.worker import create_celery_app, event_handler
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from parley_usage.config import get_settings
from parley_usage.ledger import record_usage

log = get_logger(__name__)

settings = get_settings()
app = create_celery_app("usage", topology.USAGE, settings)


@cache
def engine() -> Engine:
    # Created lazily, in each prefork child, never inherited across fork.
    return create_sync_db_engine(
        settings.database_url, application_name="usage.worker", pool_size=2, max_overflow=2
    )


@event_handler(app, TokensConsumedV1, transient=(OperationalError, InterfaceError))
def on_tokens_consumed(event: TokensConsumedV1) -> None:
    inserted = record_usage(engine(), event)
    log.info("ledger.recorded" if inserted else "ledger.duplicate_ignored", user_id=str(event.user_id))
