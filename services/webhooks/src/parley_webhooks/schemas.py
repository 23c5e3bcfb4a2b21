"""Request and response bodies of the webhooks API."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from parley_common.messaging import topology
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

# Routed to the webhooks queue for webhooks itself, never delivered: ``user.deleted.v1`` erases the
# user's endpoints (parley_webhooks.erasure), so there is no endpoint left to send it to.
INTERNAL_EVENT_TYPES: frozenset[str] = frozenset({"user.deleted.v1"})
# What an endpoint may subscribe to: every other event type routed to the webhooks queue.
PUBLIC_EVENT_TYPES: tuple[str, ...] = tuple(
    event_type for event_type in topology.WEBHOOKS.event_types if event_type not in INTERNAL_EVENT_TYPES
)


def _check_event_types(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    unknown = sorted(set(value) - set(PUBLIC_EVENT_TYPES))
    if unknown:
        raise ValueError(f"unknown event types {unknown}; subscribe to any of {list(PUBLIC_EVENT_TYPES)}")
    return sorted(set(value))


class EndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048, description="https:// URL that receives the POSTs")
    description: str = Field("", max_length=500)
    event_types: list[str] = Field(min_length=1, max_length=50, description="Event types to receive")
    enabled: bool = True

    _types = field_validator("event_types")(_check_event_types)


class EndpointUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, max_length=2048)
    description: str | None = Field(None, max_length=500)
    event_types: list[str] | None = Field(None, min_length=1, max_length=50)
    enabled: bool | None = None

    _types = field_validator("event_types")(_check_event_types)


class EndpointOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: UUID
    url: str
    description: str
    event_types: list[str]
    enabled: bool
    disabled_reason: str | None = Field(
        None, description="gone (the receiver answered 410), failing, or None"
    )
    disabled_at: datetime | None
    failing_since: datetime | None = Field(None, description="Start of the current run of failed attempts")
    last_success_at: datetime | None
    created_at: datetime
    modified_at: datetime


class EndpointCreated(EndpointOut):
    secret: str = Field(description="The signing secret (whsec_…); shown once, store it now")


class SecretRotated(BaseModel):
    secret: str = Field(description="The new signing secret; shown once")
    previous_secret_expires_at: datetime | None = Field(
        None, description="Until then both secrets sign each delivery (two v1 signatures)"
    )


class EndpointList(BaseModel):
    data: list[EndpointOut]


class AttemptOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    number: int
    scheduled_at: datetime | None
    started_at: datetime
    finished_at: datetime | None
    outcome: str | None
    status_code: int | None
    latency_ms: int | None
    error: str | None
    response_body: str | None
    response_truncated: bool


class DeliveryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: UUID
    endpoint_id: UUID
    event_id: UUID
    event_type: str
    webhook_id: str
    status: Literal["pending", "succeeded", "failed"]
    attempt_count: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    succeeded_at: datetime | None
    finished_at: datetime | None


class DeliveryDetail(DeliveryOut):
    payload: dict[str, Any]
    attempts: list[AttemptOut]

    @model_validator(mode="before")
    @classmethod
    def _payload_from_body(cls, data: Any) -> Any:
        if isinstance(data, dict) and "payload" not in data and "body" in data:
            return {**data, "payload": json.loads(data["body"])}
        return data


class DeliveryPage(BaseModel):
    data: list[DeliveryOut]
    has_more: bool
    next_cursor: str | None = Field(None, description="Pass as ?cursor= for the next (older) page")


class ReplayRange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: AwareDatetime = Field(description="Deliveries created at or after this instant")
    until: AwareDatetime = Field(description="…and before this one")

    @model_validator(mode="after")
    def _ordered(self) -> ReplayRange:
        if self.until <= self.since:
            raise ValueError("until must be after since")
        return self


class ReplayResult(BaseModel):
    replayed: int
