"""The union of every event type, parsing by ``type``, and JSON Schema export."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from parley_common.events.conversation import MessageCompletedV1
from parley_common.events.envelope import Event
from parley_common.events.quota import PlanChangedV1, QuotaThresholdCrossedV1
from parley_common.events.usage import TokensConsumedV1
from parley_common.events.user import UserDeletedV1, UserRegisteredV1
from parley_common.events.webhooks import EndpointDisabledV1

AnyEvent = Annotated[
    TokensConsumedV1
    | MessageCompletedV1
    | UserRegisteredV1
    | UserDeletedV1
    | QuotaThresholdCrossedV1
    | PlanChangedV1
    | EndpointDisabledV1,
    Field(discriminator="type"),
]

_ADAPTER: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)

EVENT_TYPES: dict[str, type[Event]] = {
    cls.model_fields["type"].default: cls
    for cls in (
        TokensConsumedV1,
        MessageCompletedV1,
        UserRegisteredV1,
        UserDeletedV1,
        QuotaThresholdCrossedV1,
        PlanChangedV1,
        EndpointDisabledV1,
    )
}


def parse_event(data: dict[str, Any] | str | bytes) -> Event:
    """Validate an event of any known type (raises ``pydantic.ValidationError``)."""
    if isinstance(data, str | bytes):
        return _ADAPTER.validate_json(data)
    return _ADAPTER.validate_python(data)


def event_json_schema(cls: type[Event]) -> dict[str, Any]:
    """The JSON Schema of one event type as committed under ``libs/common/schemas/events``."""
    schema = cls.model_json_schema(mode="serialization")
    schema["$id"] = f"https://parley.dev/schemas/events/{cls.model_fields['type'].default}.json"
    return schema
