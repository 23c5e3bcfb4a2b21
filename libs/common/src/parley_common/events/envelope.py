"""The envelope every event carries (CloudEvents-like attributes)."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID, uuid4

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from parley_common.telemetry import current_traceparent


def _now() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """Something that happened, told to whoever subscribes.

    ``id`` is unique per event and is the consumers' idempotency key (and the Celery task id). The
    ``type`` ends in a version (``.v1``); within a version changes are additive only. Unknown fields are
    ignored so an older consumer can read a newer producer's event (tolerant reader).
    """

    model_config = ConfigDict(frozen=True, extra="ignore", json_schema_serialization_defaults_required=True)

    id: UUID = Field(default_factory=uuid4, description="Unique event id; consumers deduplicate on it")
    type: str = Field(description="Event type with its version, e.g. usage.tokens_consumed.v1")
    source: str = Field(description="The service that emitted it (gateway, chat, usage, webhooks)")
    time: AwareDatetime = Field(default_factory=_now, description="When it happened, by the emitter's clock")
    subject: str | None = Field(None, description="What it is about, usually the user id")
    region: str | None = Field(None, description="Region of the emitting deployment")
    traceparent: str | None = Field(
        default_factory=current_traceparent,
        description="W3C trace context of the request that caused it, so its handling joins that trace",
    )
