"""Chat's ASGI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import openai
from fastapi import FastAPI
from openai import AsyncOpenAI
from parley_common.api import create_service_app
from parley_common.auth.internal import InternalTokenVerifier
from parley_common.auth.jwks import KeySet
from parley_common.db.engine import async_engines, async_session_factory, ping
from parley_common.logs import get_logger
from parley_common.process import init_process

from parley_chat.completions import CompletionService
from parley_chat.config import Settings, get_settings
from parley_chat.routes import completions

OPENAI_PREFIXES = ("/v1/chat/completions", "/v1/models")

log = get_logger(__name__)


def provider_client(settings: Settings) -> AsyncOpenAI:
    if settings.provider_name == "offline":
        base_url, api_key = settings.offline_model_url, "offline"
        log.warning(
            "provider.offline_model",
            base_url=base_url,
            hint="no provider configured: answers come from the built-in offline model",
        )
    else:
        base_url = settings.openai_base_url or "https://api.openai.com/v1"
        api_key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
    return AsyncOpenAI(
        base_url=base_url,
        api_key=api_key,
        timeout=openai.Timeout(settings.provider_timeout, connect=5.0),
        max_retries=settings.provider_max_retries,
        # openai ships its own httpx fork (httpx2); its default client class takes the pool limits.
        http_client=openai.DefaultAsyncHttpxClient(
            limits=type(openai.DEFAULT_CONNECTION_LIMITS)(max_connections=1000, max_keepalive_connections=200)
        ),
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    init_process("chat", "api", settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine, _reader = async_engines(settings, "chat.api")
        client = provider_client(settings)
        app.state.completions = CompletionService(settings, async_session_factory(engine), client)
        app.state.readiness_checks = {"database": lambda: ping(engine)}
        yield
        await client.close()
        await engine.dispose()

    app = create_service_app(service="chat", lifespan=lifespan, openai_prefixes=OPENAI_PREFIXES)
    keys = (
        KeySet(url=settings.internal_jwks_url, document=settings.internal_jwks)
        if settings.internal_jwks
        else KeySet(url=settings.internal_jwks_url)
    )
    app.state.internal_verifier = InternalTokenVerifier(keys)
    app.include_router(completions.router)
    return app
