"""The webhooks API (``parley-webhooks-api``): endpoints, deliveries, inbound provider webhooks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from parley_common.api import create_service_app
from parley_common.auth.internal import verifier_for
from parley_common.db.engine import async_engine, async_session_factory, ping
from parley_common.process import init_process

from parley_webhooks.config import Settings, get_settings
from parley_webhooks.routes import deliveries, endpoints, inbound
from parley_webhooks.secret_box import SecretBox


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    init_process("webhooks", "api", settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = async_engine(settings, "webhooks.api")
        app.state.sessionmaker = async_session_factory(engine)
        app.state.readiness_checks = {"database": lambda: ping(engine)}
        yield
        await engine.dispose()

    app = create_service_app(service="webhooks", lifespan=lifespan)
    app.state.settings = settings
    app.state.internal_verifier = verifier_for(settings)
    app.state.secret_box = SecretBox(settings.webhooks_encryption_keys.get_secret_value())
    app.include_router(endpoints.router)
    app.include_router(deliveries.router)
    app.include_router(inbound.router)
    return app
