"""The gateway's ASGI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from parley_common.api import create_service_app
from parley_common.db.engine import async_engines, async_session_factory, ping
from parley_common.process import init_process

from parley_gateway.config import Settings, get_settings
from parley_gateway.routes import auth, proxy
from parley_gateway.security import TokenService

OPENAI_PREFIXES = ("/v1/chat/completions", "/v1/models", "/v1/completions", "/v1/embeddings")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    init_process("gateway", "api", settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine, _ = async_engines(settings, "gateway.api")
        app.state.sessionmaker = async_session_factory(engine)
        app.state.http = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.upstream_timeout, connect=settings.upstream_connect_timeout),
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
            follow_redirects=False,
        )
        app.state.readiness_checks = {"database": lambda: ping(engine)}
        yield
        await app.state.http.aclose()
        await engine.dispose()

    app = create_service_app(service="gateway", lifespan=lifespan, openai_prefixes=OPENAI_PREFIXES)
    app.state.settings = settings
    app.state.tokens = TokenService(settings)
    app.include_router(auth.router)
    app.include_router(proxy.router)
    return app
