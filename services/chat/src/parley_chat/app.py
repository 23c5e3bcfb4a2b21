"""Chat's ASGI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from parley_common.api import create_service_app
from parley_common.auth.internal import verifier_for
from parley_common.db.engine import async_engines, async_session_factory, ping
from parley_common.process import init_process
from parley_common.tokens import count_text_tokens

from parley_chat.cache import ResponseCache
from parley_chat.completions import CompletionService
from parley_chat.config import Settings, get_settings
from parley_chat.conversations.service import ConversationService
from parley_chat.documents.service import DocumentService
from parley_chat.embeddings import LocalEmbedder
from parley_chat.providers import Router
from parley_chat.routes import completions, conversations, documents, models
from parley_chat.semantic import SemanticIndex

OPENAI_PREFIXES = ("/v1/chat/completions", "/v1/models")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    init_process("chat", "api", settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Load the tokenizer now: its first use reads the BPE table (most of a second, synchronously), and
        # that first use is a cut stream's usage estimate, which would freeze every other stream meanwhile.
        count_text_tokens("warm up")
        writer, reader = async_engines(settings, "chat.api")
        router = Router(settings)
        cache = ResponseCache(
            settings.cache_url.get_secret_value(),
            ttl=settings.cache_ttl_seconds,
            max_bytes=settings.cache_max_bytes,
            connect_timeout=settings.redis_connect_timeout,
            command_timeout=settings.redis_command_timeout,
            pause_after_error=settings.cache_pause_after_error,
        )
        app.state.sessionmaker = async_session_factory(writer)
        app.state.router = router
        embedder = LocalEmbedder()  # one model, loaded on first use, for the semantic cache and documents
        semantic = SemanticIndex(
            cache,
            embedder,
            threshold=settings.cache_semantic_threshold,
            max_entries=settings.cache_semantic_max_entries,
        )
        app.state.completions = CompletionService(settings, app.state.sessionmaker, router, cache, semantic)
        app.state.documents = DocumentService(settings, app.state.sessionmaker, embedder)
        app.state.conversations = ConversationService(
            settings,
            app.state.sessionmaker,
            async_session_factory(reader),
            app.state.completions,
            app.state.documents,
            has_replica=reader is not writer,
        )
        # Redis is left out on purpose: the cache fails open, so chat is ready without it.
        app.state.readiness_checks = {"database": lambda: ping(writer)}
        yield
        await router.close()
        await cache.close()
        if reader is not writer:
            await reader.dispose()
        await writer.dispose()

    app = create_service_app(service="chat", lifespan=lifespan, openai_prefixes=OPENAI_PREFIXES)
    app.state.internal_verifier = verifier_for(settings)
    app.include_router(completions.router)
    app.include_router(models.router)
    app.include_router(conversations.router)
    app.include_router(documents.router)
    return app
