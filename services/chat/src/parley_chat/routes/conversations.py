"""``/v1/conversations``: create, list, get, rename, delete; list and post messages. Owner-scoped throughout:
another user's conversation does not exist (404), whatever the method."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from parley_common.api import SessionDep
from parley_common.auth.dependencies import Caller
from parley_common.responses import EventStreamResponse

from parley_chat.completions import USAGE_HEADER
from parley_chat.conversations.repository import ConversationRepository
from parley_chat.conversations.schemas import (
    DEFAULT_TITLE,
    ConversationCreate,
    ConversationUpdate,
    MessageCreate,
    Order,
    conversation_out,
    message_out,
    page,
)
from parley_chat.conversations.service import ConversationService, not_found, parse_id
from parley_chat.models import Conversation

router = APIRouter(prefix="/v1/conversations", tags=["conversations"])

Limit = Annotated[int, Query(ge=1, le=100)]


def _service(request: Request) -> ConversationService:
    service: ConversationService = request.app.state.conversations
    return service


async def _owned(session: SessionDep, caller: Caller, conversation_id: str) -> Conversation:
    conversation = await ConversationRepository(session).get(caller.user_id, parse_id(conversation_id))
    if conversation is None:
        raise not_found()
    return conversation


@router.post("", status_code=201)
async def create_conversation(
    body: ConversationCreate, caller: Caller, session: SessionDep, request: Request
) -> dict[str, Any]:
    _service(request).check_model(body.model, caller)
    conversation = Conversation(
        user_id=caller.user_id,
        title=body.title or DEFAULT_TITLE,
        model=body.model,
        system_prompt=body.system_prompt,
    )
    session.add(conversation)
    await session.flush()
    await session.refresh(conversation)
    return conversation_out(conversation)


@router.get("")
async def list_conversations(
    caller: Caller, session: SessionDep, limit: Limit = 20, cursor: str | None = None
) -> dict[str, Any]:
    rows, next_cursor = await ConversationRepository(session).page(caller.user_id, limit, cursor)
    return page([conversation_out(c) for c in rows], next_cursor)


@router.get("/{conversation_id}")
async def get_conversation(conversation_id: str, caller: Caller, session: SessionDep) -> dict[str, Any]:
    return conversation_out(await _owned(session, caller, conversation_id))


@router.patch("/{conversation_id}")
async def update_conversation(
    conversation_id: str, body: ConversationUpdate, caller: Caller, session: SessionDep, request: Request
) -> dict[str, Any]:
    conversation = await _owned(session, caller, conversation_id)
    changes = body.model_dump(exclude_unset=True)
    if changes.get("title") is None:
        changes.pop("title", None)  # a title can be changed, not removed
    if changes.get("model"):
        _service(request).check_model(changes["model"], caller)
    for name, value in changes.items():
        setattr(conversation, name, value)
    await session.flush()
    await session.refresh(conversation)
    return conversation_out(conversation)


@router.delete("/{conversation_id}", status_code=204)
async def delete_conversation(conversation_id: str, caller: Caller, session: SessionDep) -> Response:
    if not await ConversationRepository(session).delete(caller.user_id, parse_id(conversation_id)):
        raise not_found()
    return Response(status_code=204)


@router.get("/{conversation_id}/messages")
async def list_messages(
    conversation_id: str,
    caller: Caller,
    session: SessionDep,
    request: Request,
    limit: Limit = 50,
    cursor: str | None = None,
    order: Order = "asc",
) -> dict[str, Any]:
    conversation = await _owned(session, caller, conversation_id)
    rows, next_cursor = await _service(request).messages_page(conversation, limit, cursor, order)
    return page([message_out(m) for m in rows], next_cursor)


@router.post("/{conversation_id}/messages", status_code=201)
async def post_message(
    conversation_id: str, body: MessageCreate, caller: Caller, request: Request
) -> Response:
    turn = await _service(request).post(
        caller,
        parse_id(conversation_id),
        body,
        request.state.request_id,
        usage_header=request.headers.get(USAGE_HEADER) == "1",
    )
    if turn.stream is not None:
        return EventStreamResponse(turn.stream, headers=turn.headers)
    return JSONResponse(turn.body, status_code=201, headers=turn.headers)
