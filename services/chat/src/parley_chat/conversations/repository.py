"""Queries on conversations and messages. Every one of them names the owner: there is no other way in.

Cursors (``parley_chat.pagination``) hold created_at and id for conversations, the message sequence number
for messages.
"""

from __future__ import annotations

from uuid import UUID

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from parley_chat.conversations.schemas import Order
from parley_chat.models import Conversation, Message
from parley_chat.pagination import decode_cursor, encode_cursor, invalid_cursor, newest_first_page


class ConversationRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(
        self, user_id: UUID, conversation_id: UUID, *, for_update: bool = False
    ) -> Conversation | None:
        statement = select(Conversation).where(
            Conversation.user_id == user_id, Conversation.id == conversation_id
        )
        if for_update:
            statement = statement.with_for_update()
        result: Conversation | None = (await self.session.execute(statement)).scalar_one_or_none()
        return result

    async def page(
        self, user_id: UUID, limit: int, cursor: str | None
    ) -> tuple[list[Conversation], str | None]:
        """Newest first."""
        statement = select(Conversation).where(Conversation.user_id == user_id)
        return await newest_first_page(self.session, statement, Conversation, limit, cursor)

    async def delete(self, user_id: UUID, conversation_id: UUID) -> bool:
        result = await self.session.execute(
            delete(Conversation).where(Conversation.user_id == user_id, Conversation.id == conversation_id)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def add_message(self, message: Message) -> int:
        """Insert a message and move its conversation's counters; returns the message's sequence number."""
        self.session.add(message)
        await self.session.flush()  # eager defaults: seq and created_at come back with the INSERT
        await self.session.execute(
            update(Conversation)
            .where(Conversation.user_id == message.user_id, Conversation.id == message.conversation_id)
            .values(
                last_message_seq=func.greatest(Conversation.last_message_seq, message.seq),
                message_count=Conversation.message_count + 1,
                updated_at=func.now(),
            )
        )
        return message.seq


class MessageRepository:
    """Message reads; the session may be a replica's."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def newest_seq(self, user_id: UUID, conversation_id: UUID) -> int:
        value = await self.session.scalar(
            select(func.max(Message.seq)).where(
                Message.user_id == user_id, Message.conversation_id == conversation_id
            )
        )
        return int(value or 0)

    async def page(
        self, user_id: UUID, conversation_id: UUID, limit: int, cursor: str | None, order: Order
    ) -> tuple[list[Message], str | None]:
        statement = select(Message).where(
            Message.user_id == user_id, Message.conversation_id == conversation_id
        )
        if cursor:
            after = decode_cursor(cursor)
            if not isinstance(after, int):
                raise invalid_cursor()
            statement = statement.where(Message.seq > after if order == "asc" else Message.seq < after)
        statement = statement.order_by(Message.seq.asc() if order == "asc" else Message.seq.desc()).limit(
            limit + 1
        )
        rows = list((await self.session.execute(statement)).scalars())
        if len(rows) <= limit:
            return rows, None
        rows = rows[:limit]
        return rows, encode_cursor(rows[-1].seq)

    async def newest(self, user_id: UUID, conversation_id: UUID, limit: int) -> list[Message]:
        """The ``limit`` most recent messages, oldest first."""
        statement = (
            select(Message)
            .where(Message.user_id == user_id, Message.conversation_id == conversation_id)
            .order_by(Message.seq.desc())
            .limit(limit)
        )
        rows = list((await self.session.execute(statement)).scalars())
        rows.reverse()
        return rows
