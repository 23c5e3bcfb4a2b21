"""Parley's integration events: one envelope, one frozen model per type, one discriminated union.

Import events from here: ``from parley_common.events import TokensConsumedV1, parse_event``.
"""

from parley_common.events.conversation import MessageCompletedV1
from parley_common.events.envelope import Event
from parley_common.events.quota import PlanChangedV1, QuotaThresholdCrossedV1
from parley_common.events.registry import EVENT_TYPES, AnyEvent, event_json_schema, parse_event
from parley_common.events.usage import TokensConsumedV1
from parley_common.events.user import UserDeletedV1, UserRegisteredV1
from parley_common.events.webhooks import EndpointDisabledV1

__all__ = [
    "EVENT_TYPES",
    "AnyEvent",
    "EndpointDisabledV1",
    "Event",
    "MessageCompletedV1",
    "PlanChangedV1",
    "QuotaThresholdCrossedV1",
    "TokensConsumedV1",
    "UserDeletedV1",
    "UserRegisteredV1",
    "event_json_schema",
    "parse_event",
]
