"""API shapes of ``/v1/documents``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from parley_chat.models import Document

# A request-size backstop only: the plan's ``rag_max_document_bytes`` is the limit users meet.
MAX_CONTENT_CHARS = 10_000_000


class DocumentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=200)
    content: str = Field(min_length=1, max_length=MAX_CONTENT_CHARS, description="Plain text")


def document_out(document: Document) -> dict[str, Any]:
    return {
        "id": str(document.id),
        "object": "document",
        "title": document.title,
        "bytes": document.bytes,
        "chunk_count": document.chunk_count,
        "created_at": int(document.created_at.timestamp()),
    }
