"""The usage API's ASGI application (``parley-usage-api``): read-only, behind the gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from parley_common.api import create_service_app
from parley_common.auth.internal import verifier_for
from parley_common.db.engine import async_engine, async_session_factory, ping
from parley_common.process import init_process

from parley_usage.config import Settings, get_settings
from parley_usage.routes import usage


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    init_process("usage", "api", settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Reads only: the replica when one is configured.
        reader = async_engine(settings, "usage.api", replica=True)
        app.state.sessionmaker = async_session_factory(reader)
        app.state.readiness_checks = {"database": lambda: ping(reader)}
        yield
        await reader.dispose()

    app = create_service_app(service="usage", lifespan=lifespan)
    app.state.internal_verifier = verifier_for(settings)
    app.include_router(usage.router)
    return app
