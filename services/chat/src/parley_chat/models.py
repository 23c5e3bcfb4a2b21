"""Chat's tables (schema ``chat``)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any
from uuid import UUID

from parley_common.db.base import schema_metadata
from parley_common.messaging.outbox import OutboxMixin
from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA = "chat"
MESSAGE_PARTITIONS = 16  # hash partitions of chat.messages; changing it is a migration
EMBEDDING_DIMENSION = 384  # all-MiniLM-L6-v2; another embedding model is a migration


class Model(DeclarativeBase):
    metadata = schema_metadata(SCHEMA)


class Completion(Model):
    """One model call made on a user's behalf: the record its usage event describes."""

    __tablename__ = "completions"

    id: Mapped[UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[UUID] = mapped_column(index=True)
    request_id: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(200))
    provider: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    cached: Mapped[bool] = mapped_column(server_default=text("false"))
    estimated: Mapped[bool] = mapped_column(server_default=text("false"))
    conversation_id: Mapped[UUID | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Conversation(Model):
    __tablename__ = "conversations"

    id: Mapped[UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[UUID] = mapped_column()
    title: Mapped[str] = mapped_column(String(200))
    model: Mapped[str | None] = mapped_column(String(200))
    system_prompt: Mapped[str | None] = mapped_column(Text)
    # seq of the newest message: tells a history read from a replica whether the replica has caught up.
    last_message_seq: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    message_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        # Messages reference (user_id, id): a message can only ever belong to its owner's conversation.
        UniqueConstraint("user_id", "id", name="uq_conversations_user_id_id"),
        Index("ix_conversations_user_created", "user_id", "created_at", "id"),
    )


class Message(Model):
    """A message of a conversation; the table is hash-partitioned by ``user_id`` (see the migration)."""

    __tablename__ = "messages"

    user_id: Mapped[UUID] = mapped_column(primary_key=True)
    id: Mapped[UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    conversation_id: Mapped[UUID] = mapped_column()
    seq: Mapped[int] = mapped_column(
        BigInteger, server_default=text("nextval('chat.message_seq')"), nullable=False
    )
    role: Mapped[str] = mapped_column(String(20))
    content: Mapped[str] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), server_default=text("'completed'"))
    finish_reason: Mapped[str | None] = mapped_column(String(40))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    request_id: Mapped[str | None] = mapped_column(String(128))
    # A reply's document excerpts (document_id, title, chunk, score), when the turn asked for them.
    sources: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        ForeignKeyConstraint(
            ["user_id", "conversation_id"],
            ["chat.conversations.user_id", "chat.conversations.id"],
            ondelete="CASCADE",
            name="fk_messages_conversation",
        ),
        Index("ix_messages_conversation_seq", "user_id", "conversation_id", "seq"),
        {"postgresql_partition_by": "HASH (user_id)"},
    )
    __mapper_args__ = {"eager_defaults": True}  # noqa: RUF012 - read once by the declarative mapper


class Document(Model):
    """A text a user keeps for retrieval; its chunks carry the embeddings."""

    __tablename__ = "documents"

    id: Mapped[UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[UUID] = mapped_column()
    title: Mapped[str] = mapped_column(String(200))
    bytes: Mapped[int] = mapped_column(Integer)
    chunk_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        UniqueConstraint("user_id", "id", name="uq_documents_user_id_id"),
        Index("ix_documents_user_created", "user_id", "created_at", "id"),
    )


class DocumentChunk(Model):
    """One excerpt of a document and its embedding (pgvector)."""

    __tablename__ = "document_chunks"

    user_id: Mapped[UUID] = mapped_column(primary_key=True)
    document_id: Mapped[UUID] = mapped_column(primary_key=True)
    ordinal: Mapped[int] = mapped_column(Integer, primary_key=True)
    content: Mapped[str] = mapped_column(Text)
    embedding: Mapped[Any] = mapped_column(Vector(EMBEDDING_DIMENSION))

    __table_args__ = (
        # (user_id, document_id) references the owner's document: a chunk can never cross users.
        ForeignKeyConstraint(
            ["user_id", "document_id"],
            ["chat.documents.user_id", "chat.documents.id"],
            ondelete="CASCADE",
            name="fk_document_chunks_document",
        ),
    )


class OutboxMessage(OutboxMixin, Model):
    pass
