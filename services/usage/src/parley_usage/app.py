"""The usage API's ASGI application (``parley-usage-api``): read-only, behind the gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from parley_common.api import create_service_app
from parley_common.auth.internal import InternalTokenVerifier
from parley_common.auth.jwks import KeySet
from parley_common.db.engine import async_engines, async_session_factory, ping
from parley_common.process import init_process

from parley_usage.config import Settings, get_settings
from parley_usage.routes import usage


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    init_process("usage", "api", settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Reads only: the replica when one is configured.
        writer, reader = async_engines(settings, "usage.api")
        app.state.sessionmaker = async_session_factory(reader)
        app.state.readiness_checks = {"database": lambda: ping(reader)}
        yield
        await reader.dispose()
        if writer is not reader:
            await writer.dispose()

    app = create_service_app(service="usage", lifespan=lifespan)
    keys = (
        KeySet(url=settings.internal_jwks_url, document=settings.internal_jwks)
        if settings.internal_jwks
        else KeySet(url=settings.internal_jwks_url)
    )
    app.state.internal_verifier = InternalTokenVerifier(keys)
    app.include_router(usage.router)
    return app
