"""API shapes of ``/v1/conversations``."""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from parley_chat.models import Conversation, Message
from parley_chat.schemas import StreamOptions

DEFAULT_TITLE = "New conversation"


class ConversationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(None, min_length=1, max_length=200)
    model: str | None = Field(None, min_length=1, max_length=200)
    system_prompt: str | None = Field(None, max_length=100_000)


class ConversationUpdate(BaseModel):
    """Rename (or change the model or system prompt of) a conversation."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(None, min_length=1, max_length=200)
    model: str | None = Field(None, min_length=1, max_length=200)
    system_prompt: str | None = Field(None, max_length=100_000)


class MessageCreate(BaseModel):
    """A user message; the reply is generated with the conversation's history (streamed when asked)."""

    model_config = ConfigDict(extra="forbid")

    content: str = Field(min_length=1, max_length=200_000)
    model: str | None = Field(None, max_length=200)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = None
    parley_cache: bool | None = None
    documents: Literal["all"] | list[UUID] | None = Field(
        None,
        max_length=100,
        description='Answer with excerpts of the caller\'s documents: "all", or a list of document ids',
    )


def _ts(value: Any) -> int:
    return int(value.timestamp())


def conversation_out(conversation: Conversation) -> dict[str, Any]:
    return {
        "id": str(conversation.id),
        "object": "conversation",
        "title": conversation.title,
        "model": conversation.model,
        "system_prompt": conversation.system_prompt,
        "message_count": conversation.message_count,
        "created_at": _ts(conversation.created_at),
        "updated_at": _ts(conversation.updated_at),
    }


def message_out(message: Message) -> dict[str, Any]:
    usage = (
        {"prompt_tokens": message.prompt_tokens or 0, "completion_tokens": message.completion_tokens or 0}
        if message.role == "assistant"
        else None
    )
    return {
        "id": str(message.id),
        "object": "conversation.message",
        "conversation_id": str(message.conversation_id),
        "role": message.role,
        "content": message.content,
        "model": message.model,
        "status": message.status,
        "finish_reason": message.finish_reason,
        "usage": usage,
        "sources": message.sources or [],
        "created_at": _ts(message.created_at),
    }


def page(data: list[dict[str, Any]], next_cursor: str | None) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": next_cursor is not None, "next_cursor": next_cursor}


Order = Literal["asc", "desc"]
