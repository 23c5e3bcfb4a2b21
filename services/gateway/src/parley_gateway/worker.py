"""``parley-gateway-worker``: applies ``plan.changed.v1`` (from billing webhooks and admins) to accounts.

Idempotent on the event id (``applied_events``), and order-aware: an event older than the plan change
already applied to the account is ignored, so a late redelivery cannot undo a newer upgrade. After
commit the account's new revision goes to Redis, so every gateway replica applies the plan to the
account's next request.
"""

from __future__ import annotations

from functools import lru_cache
from uuid import UUID

import redis
from parley_common.db.engine import create_sync_db_engine, sync_session_factory
from parley_common.events import PlanChangedV1
from parley_common.logs import get_logger
from parley_common.messaging import topology
from parley_common.messaging.worker import WorkerSettings, create_celery_app, event_handler
from parley_common.settings import DatabaseSettings, RedisSettings, load_settings
from pydantic import SecretStr
from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from parley_gateway.limits import lua
from parley_gateway.limits.keys import UserKeys
from parley_gateway.models import AppliedEvent, Plan, User

log = get_logger(__name__)


class GatewayWorkerSettings(WorkerSettings, DatabaseSettings, RedisSettings):
    redis_limits_url: SecretStr | None = None

    @property
    def limits_redis_url(self) -> str:
        return (self.redis_limits_url or self.redis_url).get_secret_value()


@lru_cache
def get_worker_settings() -> GatewayWorkerSettings:
    return load_settings(GatewayWorkerSettings)


@lru_cache
def _sessions() -> sessionmaker[Session]:
    settings = get_worker_settings()
    engine = create_sync_db_engine(settings.database_url, application_name="gateway.worker", pool_size=2)
    return sync_session_factory(engine)


@lru_cache
def _redis() -> redis.Redis:
    settings = get_worker_settings()
    return redis.Redis.from_url(
        settings.limits_redis_url,
        socket_connect_timeout=settings.redis_connect_timeout,
        socket_timeout=settings.redis_command_timeout,
    )


class UnknownPlan(Exception):
    """The event names a plan this gateway does not have: a configuration error, dead-lettered."""


def publish_user_revision(user_id: UUID, revision: int) -> None:
    key = UserKeys.build(get_worker_settings().redis_key_prefix, user_id).user_revision
    try:
        _redis().eval(lua.PUBLISH_REVISION, 1, key, revision)
    except (redis.RedisError, OSError) as exc:
        # Replicas then pick the change up when their cached copy expires (identity_cache_seconds).
        log.warning("worker.revision_not_published", user_id=str(user_id), error=type(exc).__name__)


def apply_plan_change(session: Session, event: PlanChangedV1) -> int | None:
    """Apply ``event``; returns the account's new revision, or None when there was nothing to do."""
    recorded = session.execute(
        insert(AppliedEvent)
        .values(event_id=event.id, event_type=event.type)
        .on_conflict_do_nothing()
        .returning(AppliedEvent.event_id)
    ).first()
    if recorded is None:
        log.info("plan_change.duplicate", user_id=str(event.user_id))
        return None
    user = session.get(User, event.user_id, with_for_update=True)
    if user is None:
        log.warning("plan_change.unknown_user", user_id=str(event.user_id))
        return None
    if session.get(Plan, event.plan) is None:
        raise UnknownPlan(event.plan)
    if user.plan_changed_at is not None and event.time <= user.plan_changed_at:
        log.info("plan_change.superseded", user_id=str(user.id), plan=event.plan)
        return None
    previous = user.plan
    user.plan_changed_at = event.time
    if previous == event.plan:
        return None
    user.plan = event.plan
    revision = session.execute(
        update(User).where(User.id == user.id).values(revision=User.revision + 1).returning(User.revision)
    ).scalar_one()
    log.info("plan_change.applied", user_id=str(user.id), plan=event.plan, previous_plan=previous)
    return int(revision)


def set_role(email: str, role: str) -> bool:
    """Give an account a role (the admin CLI); False when no account has that email."""
    with _sessions().begin() as session:
        row = session.execute(
            update(User)
            .where(User.email == email.strip().lower())
            .values(role=role, revision=User.revision + 1)
            .returning(User.id, User.revision)
        ).first()
    if row is None:
        return False
    publish_user_revision(row.id, row.revision)
    return True


app = create_celery_app("gateway", topology.GATEWAY, get_worker_settings())


@event_handler(app, PlanChangedV1, transient=(OperationalError,))
def on_plan_changed(event: PlanChangedV1) -> None:
    with _sessions().begin() as session:
        revision = apply_plan_change(session, event)
    if revision is not None:
        publish_user_revision(event.user_id, revision)
