"""Events about outbound webhook endpoints."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from pydantic import Field

from parley_common.events.envelope import Event


class EndpointDisabledV1(Event):
    """Emitted by webhooks when it disables an endpoint (410 Gone, or failing for too long)."""

    type: Literal["webhooks.endpoint_disabled.v1"] = "webhooks.endpoint_disabled.v1"
    user_id: UUID
    endpoint_id: UUID
    url: str = Field(max_length=2048)
    reason: Literal["gone", "failing"]
