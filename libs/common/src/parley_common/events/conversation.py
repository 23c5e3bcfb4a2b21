"""Events about conversations."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from pydantic import NonNegativeInt

from parley_common.events.envelope import Event


class MessageCompletedV1(Event):
    """Emitted by chat when an assistant reply has been stored in a conversation."""

    type: Literal["conversation.message_completed.v1"] = "conversation.message_completed.v1"
    user_id: UUID
    conversation_id: UUID
    message_id: UUID
    model: str
    finish_reason: str | None = None
    completion_tokens: NonNegativeInt = 0
