"""Conversation turns: store the user's message, call the model with the history, store the reply.

The user's message is committed before the model is called (it is part of the conversation even if the
call fails). The reply, the conversation's counters, ``conversation.message_completed.v1`` and the call's
usage record are written in one transaction when the call ends, whether it completed, failed or was cut.

History is read from the read replica when one is configured. A replica may lag: the conversation row,
read from the primary, carries the sequence number of its newest message, and a replica that has not
reached it yet is bypassed for that read, so a turn never misses the previous one.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from parley_common.auth.internal import InternalIdentity
from parley_common.errors import Problem
from parley_common.events import MessageCompletedV1
from parley_common.logs import get_logger
from parley_common.tokens import count_text_tokens, estimate_prompt_tokens
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from parley_chat.completions import CacheStatus, CompletionService, Outcome
from parley_chat.config import Settings
from parley_chat.conversations.repository import ConversationRepository, MessageRepository
from parley_chat.conversations.schemas import DEFAULT_TITLE, MessageCreate, Order, message_out
from parley_chat.documents.service import DocumentService, Excerpt, sources_header
from parley_chat.models import Conversation, Message, OutboxMessage
from parley_chat.schemas import ChatCompletionRequest

log = get_logger(__name__)

_PER_MESSAGE_TOKENS = 3  # framing tokens of one chat message (parley_common.tokens uses the same figure)
_TITLE_CHARS = 60


def parse_id(value: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise not_found() from None


def not_found() -> Problem:
    return Problem(404, "conversation_not_found", "No such conversation.")


def build_prompt(
    system_prompt: str | None, history: list[Message], content: str, budget: int
) -> tuple[list[dict[str, Any]], int]:
    """The messages sent to the model: the system prompt, as much recent history as fits, the new message.

    Returns the messages and how many history messages were left out.
    """
    head = [{"role": "system", "content": system_prompt}] if system_prompt else []
    tail = [{"role": "user", "content": content}]
    used = estimate_prompt_tokens(head + tail)
    if used > budget:
        raise Problem(
            400,
            "context_length_exceeded",
            f"This message needs about {used} tokens; the model's budget for a turn is {budget}.",
        )
    kept: list[dict[str, Any]] = []
    usable = [m for m in history if m.content]
    for message in reversed(usable):
        cost = count_text_tokens(message.content) + _PER_MESSAGE_TOKENS
        if used + cost > budget:
            break
        kept.append({"role": message.role, "content": message.content})
        used += cost
    kept.reverse()
    return head + kept + tail, len(usable) - len(kept)


@dataclass
class Turn:
    """What posting a message produced: a JSON body, or a stream with its headers."""

    body: dict[str, Any] | None
    stream: AsyncIterator[bytes] | None
    headers: dict[str, str]


class ConversationService:
    def __init__(
        self,
        settings: Settings,
        writer: async_sessionmaker[AsyncSession],
        reader: async_sessionmaker[AsyncSession],
        completions: CompletionService,
        documents: DocumentService,
        *,
        has_replica: bool,
    ) -> None:
        self.settings = settings
        self.writer = writer
        self.reader = reader
        self.completions = completions
        self.documents = documents
        self.has_replica = has_replica

    def check_model(self, model: str | None, caller: InternalIdentity) -> None:
        if model is None:
            return
        try:
            self.completions.router.resolve(model, caller)
        except Problem:
            raise Problem(
                400,
                "model_not_available",
                f"The model `{model}` is not available on your plan.",
                param="model",
            ) from None

    # -- history ----------------------------------------------------------------------------------------

    async def _read(self, conversation: Conversation, query: Any) -> Any:
        """Run ``query(MessageRepository)`` on the replica, or on the primary when the replica lags."""
        if self.has_replica:
            async with self.reader() as session:
                repo = MessageRepository(session)
                if (
                    await repo.newest_seq(conversation.user_id, conversation.id)
                    >= conversation.last_message_seq
                ):
                    return await query(repo)
            log.info("history.replica_behind", conversation_id=str(conversation.id))
        async with self.writer() as session:
            return await query(MessageRepository(session))

    async def history(self, conversation: Conversation) -> list[Message]:
        async def newest(repo: MessageRepository) -> list[Message]:
            return await repo.newest(
                conversation.user_id, conversation.id, self.settings.history_max_messages
            )

        result: list[Message] = await self._read(conversation, newest)
        return result

    async def messages_page(
        self, conversation: Conversation, limit: int, cursor: str | None, order: Order
    ) -> tuple[list[Message], str | None]:
        async def page(repo: MessageRepository) -> tuple[list[Message], str | None]:
            return await repo.page(conversation.user_id, conversation.id, limit, cursor, order)

        result: tuple[list[Message], str | None] = await self._read(conversation, page)
        return result

    # -- a turn -----------------------------------------------------------------------------------------

    async def post(
        self,
        caller: InternalIdentity,
        conversation_id: UUID,
        body: MessageCreate,
        request_id: str,
        *,
        usage_header: bool,
    ) -> Turn:
        async with self.writer() as session:
            conversation = await ConversationRepository(session).get(caller.user_id, conversation_id)
        if conversation is None:
            raise not_found()
        router = self.completions.router
        route = router.resolve(body.model or conversation.model, caller)
        budget = self.settings.prompt_budget(route.model, body.max_completion_tokens or body.max_tokens)
        system_prompt = conversation.system_prompt
        sources: list[Excerpt] = []  # the document excerpts handed to the model
        if body.documents is not None:
            share = int(budget * self.settings.rag_context_share)
            excerpts, sources = await self.documents.excerpts_for(caller, body.content, body.documents, share)
            if sources:
                system_prompt = f"{system_prompt}\n\n{excerpts}" if system_prompt else excerpts
        messages, dropped = build_prompt(
            system_prompt, await self.history(conversation), body.content, budget
        )
        request = ChatCompletionRequest.model_validate(
            {
                **body.model_dump(exclude_none=True, exclude={"content", "model", "documents"}),
                "model": route.requested,
                "messages": messages,
            }
        )
        call = self.completions.prepare(
            request, caller, request_id, usage_header=usage_header, messages=messages, route=route
        )
        call.conversation_id = conversation.id

        user_message = Message(
            id=uuid.uuid4(),
            user_id=caller.user_id,
            conversation_id=conversation.id,
            role="user",
            content=body.content,
            request_id=request_id,
        )
        async with self.writer.begin() as session:
            repo = ConversationRepository(session)
            current = await repo.get(caller.user_id, conversation.id, for_update=True)
            if current is None:
                raise not_found()
            if current.message_count == 0 and current.title == DEFAULT_TITLE:
                current.title = _title(body.content)
            await repo.add_message(user_message)
        log.info("conversation.turn", conversation_id=str(conversation.id), history_dropped=dropped)

        reply_id = uuid.uuid4()
        stored: dict[str, Message] = {}

        async def finish(session: AsyncSession, outcome: Outcome) -> None:
            await self._store_reply(
                session, caller, conversation.id, reply_id, request_id, outcome, stored, sources
            )

        headers = {
            "x-parley-conversation-id": str(conversation.id),
            "x-parley-user-message-id": str(user_message.id),
            "x-parley-assistant-message-id": str(reply_id),
            **sources_header(sources),  # the body and the stored reply have them too
        }
        if body.stream:
            chunks, cached = await self.completions.stream(call, finish)
            return Turn(None, chunks, _with_cache(headers, cached))
        completion, cached = await self.completions.complete(call, finish)
        reply = stored.get("reply")
        return Turn(
            {
                "object": "conversation.turn",
                "conversation_id": str(conversation.id),
                "user_message": message_out(user_message),
                "assistant_message": message_out(reply) if reply else None,
                "sources": [source.public() for source in sources],
                "usage": completion.get("usage"),
            },
            None,
            _with_cache(headers, cached),
        )

    async def _store_reply(
        self,
        session: AsyncSession,
        caller: InternalIdentity,
        conversation_id: UUID,
        reply_id: UUID,
        request_id: str,
        outcome: Outcome,
        stored: dict[str, Message],
        sources: list[Excerpt],
    ) -> None:
        """The reply and its event, in the usage record's transaction (nothing when nothing was generated)."""
        text = outcome.text
        if outcome.status != "completed" and not text:
            return
        repo = ConversationRepository(session)
        # Locked until commit, so a concurrent delete cannot slip between this check and the insert.
        if await repo.get(caller.user_id, conversation_id, for_update=True) is None:
            log.info("conversation.deleted_during_turn", conversation_id=str(conversation_id))
            return
        reply = Message(
            id=reply_id,
            user_id=caller.user_id,
            conversation_id=conversation_id,
            role="assistant",
            content=text,
            model=outcome.model,
            status=outcome.status,
            finish_reason=outcome.finish_reason,
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            request_id=request_id,
            sources=[source.public() for source in sources] or None,
        )
        await repo.add_message(reply)
        stored["reply"] = reply
        if outcome.status == "completed":
            event = MessageCompletedV1(
                source="chat",
                subject=str(caller.user_id),
                region=self.settings.region,
                user_id=caller.user_id,
                conversation_id=conversation_id,
                message_id=reply_id,
                model=outcome.model,
                finish_reason=outcome.finish_reason,
                completion_tokens=outcome.completion_tokens,
            )
            session.add(OutboxMessage.from_event(event))


def _title(content: str) -> str:
    words = " ".join(content.split())
    return words if len(words) <= _TITLE_CHARS else words[: _TITLE_CHARS - 1].rstrip() + "…"


def _with_cache(headers: dict[str, str], cached: CacheStatus) -> dict[str, str]:
    return {**headers, "x-parley-cache": cached} if cached else headers
