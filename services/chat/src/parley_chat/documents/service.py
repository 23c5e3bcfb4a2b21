"""Documents: stored with their chunks' embeddings, and searched for the excerpts a turn needs.

A document is cut into chunks (``chunking``), each embedded by the same in-process model as the semantic
cache, and stored in PostgreSQL with pgvector, in one transaction with the document's row: a document is
searchable completely or not at all, and deleting it deletes its chunks. Every query names the owner, and
chunks reference their owner's document by (user_id, document_id), so no search can reach another
user's text.

A search is exact: cosine distance over the owner's chunks only, computed in PostgreSQL. Plans bound how
much a user keeps (``rag_max_documents`` × ``rag_max_document_bytes``), and so how much one search reads.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal
from uuid import UUID

import numpy as np
from parley_common.auth.internal import InternalIdentity
from parley_common.errors import Problem
from parley_common.logs import get_logger
from parley_common.tokens import count_text_tokens
from prometheus_client import Counter, Histogram
from sqlalchemy import and_, delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from parley_chat.config import Settings
from parley_chat.documents.chunking import chunk_text
from parley_chat.documents.schemas import DocumentCreate
from parley_chat.embeddings import Embedder
from parley_chat.models import Document, DocumentChunk
from parley_chat.pagination import newest_first_page

log = get_logger(__name__)

DOCUMENTS_STORED = Counter("parley_chat_documents_stored_total", "Documents stored for retrieval")
CHUNKS_STORED = Counter("parley_chat_document_chunks_stored_total", "Document chunks embedded and stored")
EMBED_DOCUMENT_SECONDS = Histogram(
    "parley_chat_document_embed_seconds",
    "Time to embed one document's chunks (uploads queue for it: one at a time per process)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
RETRIEVALS = Counter(
    "parley_chat_retrievals_total", "Searches of a user's documents for a turn", ["result"]
)  # excerpts | none
RETRIEVAL_SECONDS = Histogram(
    "parley_chat_retrieval_seconds",
    "Time to embed a question and search the user's chunks",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)

# What a request may search: every document of the caller, or the ones it names.
DocumentScope = Literal["all"] | list[UUID]


def not_found() -> Problem:
    return Problem(404, "document_not_found", "No such document.")


def parse_document_id(value: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise not_found() from None


def not_in_plan() -> Problem:
    return Problem(403, "retrieval_not_in_plan", "Your plan does not include documents for retrieval.")


@dataclass(frozen=True)
class Excerpt:
    document_id: UUID
    title: str
    chunk: int
    content: str
    score: float  # cosine similarity with the question

    def public(self) -> dict[str, object]:
        return {
            "document_id": str(self.document_id),
            "title": self.title,
            "chunk": self.chunk,
            "score": round(self.score, 4),
        }


SOURCES_HEADER = "x-parley-sources"


def sources_header(excerpts: list[Excerpt]) -> dict[str, str]:
    """The header naming a reply's excerpts (``<document id>#<chunk>,…``): a stream's only place for them."""
    return {SOURCES_HEADER: ",".join(f"{e.document_id}#{e.chunk}" for e in excerpts)} if excerpts else {}


def excerpts_prompt(excerpts: list[Excerpt], budget: int) -> tuple[str, list[Excerpt]]:
    """The system-prompt part that hands the model the excerpts (best first) that fit in ``budget`` tokens."""
    text = (
        "Excerpts from the user's documents, most relevant first. Use them when they help to answer, "
        "cite them as [1], [2] and so on, and say so when they do not hold the answer."
    )
    kept: list[Excerpt] = []
    for excerpt in excerpts:
        part = f"\n\n[{len(kept) + 1}] {excerpt.title} (part {excerpt.chunk + 1})\n{excerpt.content}"
        if count_text_tokens(text + part) > budget:
            break
        text += part
        kept.append(excerpt)
    return text, kept


class DocumentService:
    def __init__(
        self, settings: Settings, writer: async_sessionmaker[AsyncSession], embedder: Embedder
    ) -> None:
        self.settings = settings
        self.writer = writer
        self.embedder = embedder
        # Embedding a document takes a core for seconds (about 0.3 s per 1,000 words here): one upload at
        # a time per process, so uploads queue instead of starving the streams this replica serves.
        self._embedding = asyncio.Semaphore(1)

    def _embed_all(self, chunks: list[str]) -> list[np.ndarray]:
        return [self.embedder.embed(chunk) for chunk in chunks]

    async def create(self, caller: InternalIdentity, body: DocumentCreate) -> Document:
        plan = caller.plan
        if plan.rag_max_documents == 0:
            raise not_in_plan()
        size = len(body.content.encode())
        if size > plan.rag_max_document_bytes:
            raise Problem(
                413,
                "document_too_large",
                f"This document is {size} bytes; your plan accepts documents of up to "
                f"{plan.rag_max_document_bytes} bytes.",
                param="content",
            )
        chunks = chunk_text(
            body.content, self.settings.rag_chunk_words, self.settings.rag_chunk_overlap_words
        )
        if not chunks:
            raise Problem(400, "document_empty", "The document has no text.", param="content")
        async with self.writer() as session:
            await self._check_room(session, caller)  # fail fast, before seconds of embedding
        # Embedded before the transaction, in a thread (onnxruntime releases the GIL): no lock is held
        # and the event loop keeps serving meanwhile.
        async with self._embedding:
            with EMBED_DOCUMENT_SECONDS.time():
                vectors = await asyncio.to_thread(self._embed_all, chunks)
        document = Document(user_id=caller.user_id, title=body.title, bytes=size, chunk_count=len(chunks))
        async with self.writer.begin() as session:
            # One user's uploads queue here, so two at once cannot both pass the check.
            await session.execute(
                select(func.pg_advisory_xact_lock(func.hashtextextended(str(caller.user_id), 0)))
            )
            await self._check_room(session, caller)
            session.add(document)
            await session.flush()
            session.add_all(
                DocumentChunk(
                    user_id=caller.user_id,
                    document_id=document.id,
                    ordinal=ordinal,
                    content=chunk,
                    embedding=vector,
                )
                for ordinal, (chunk, vector) in enumerate(zip(chunks, vectors, strict=True))
            )
            await session.flush()
            await session.refresh(document)
        DOCUMENTS_STORED.inc()
        CHUNKS_STORED.inc(len(chunks))
        log.info("document.stored", document_id=str(document.id), bytes=size, chunks=len(chunks))
        return document

    async def _check_room(self, session: AsyncSession, caller: InternalIdentity) -> None:
        limit = caller.plan.rag_max_documents
        if limit is None:
            return
        kept = await session.scalar(
            select(func.count()).select_from(Document).where(Document.user_id == caller.user_id)
        )
        if (kept or 0) >= limit:
            raise Problem(
                403,
                "document_limit_reached",
                f"Your plan keeps {limit} documents; delete one to add another.",
            )

    async def page(
        self, caller: InternalIdentity, limit: int, cursor: str | None
    ) -> tuple[list[Document], str | None]:
        async with self.writer() as session:
            statement = select(Document).where(Document.user_id == caller.user_id)
            return await newest_first_page(session, statement, Document, limit, cursor)

    async def get(self, caller: InternalIdentity, document_id: UUID) -> Document:
        async with self.writer() as session:
            document = await session.scalar(
                select(Document).where(Document.user_id == caller.user_id, Document.id == document_id)
            )
        if document is None:
            raise not_found()
        return document

    async def delete(self, caller: InternalIdentity, document_id: UUID) -> None:
        async with self.writer.begin() as session:
            result = await session.execute(
                delete(Document).where(Document.user_id == caller.user_id, Document.id == document_id)
            )
        if not result.rowcount:  # type: ignore[attr-defined]
            raise not_found()

    async def excerpts_for(
        self, caller: InternalIdentity, question: str, documents: DocumentScope, budget: int
    ) -> tuple[str, list[Excerpt]]:
        """The system-prompt text handing the model the best excerpts for ``question`` (within ``budget``
        tokens), and those excerpts; no excerpt, no text."""
        with RETRIEVAL_SECONDS.time():
            found = await self.search(caller, question, None if documents == "all" else documents)
        text, kept = excerpts_prompt(found, budget)
        RETRIEVALS.labels("excerpts" if kept else "none").inc()
        return (text if kept else ""), kept

    async def search(
        self, caller: InternalIdentity, question: str, documents: list[UUID] | None
    ) -> list[Excerpt]:
        """The owner's chunks closest to ``question`` (within ``documents`` when given), best first."""
        if caller.plan.rag_max_documents == 0:
            raise not_in_plan()
        vector = await asyncio.to_thread(self.embedder.embed, question)  # before taking a connection
        async with self.writer() as session:
            if documents is not None:
                found = set(
                    await session.scalars(
                        select(Document.id).where(
                            Document.user_id == caller.user_id, Document.id.in_(documents)
                        )
                    )
                )
                if found != set(documents):
                    raise Problem(404, "document_not_found", "No such document.", param="documents")
            distance = DocumentChunk.embedding.cosine_distance(vector)
            statement = (
                select(
                    DocumentChunk.document_id,
                    Document.title,
                    DocumentChunk.ordinal,
                    DocumentChunk.content,
                    distance,
                )
                .join(
                    Document,
                    and_(Document.user_id == DocumentChunk.user_id, Document.id == DocumentChunk.document_id),
                )
                .where(DocumentChunk.user_id == caller.user_id, distance <= 1 - self.settings.rag_min_score)
                .order_by(distance)
                .limit(self.settings.rag_top_k)
            )
            if documents is not None:
                statement = statement.where(DocumentChunk.document_id.in_(documents))
            rows = (await session.execute(statement)).all()
        return [Excerpt(row[0], row[1], row[2], row[3], 1 - float(row[4])) for row in rows]
