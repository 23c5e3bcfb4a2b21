"""The gateway's ASGI application."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from parley_common.api import create_service_app
from parley_common.db.engine import async_engine, async_session_factory, ping
from parley_common.logs import get_logger
from parley_common.process import init_process
from parley_common.tokens import count_text_tokens
from redis.exceptions import RedisError

from parley_gateway.config import Settings, get_settings
from parley_gateway.directory import Directory
from parley_gateway.hot_path import HotPath
from parley_gateway.limits.limiter import Limiter
from parley_gateway.limits.store import RedisStore
from parley_gateway.routes import admin, api_keys, auth, me, proxy
from parley_gateway.state import Gateway
from parley_gateway.tokens import ExternalIssuer, TokenService
from parley_gateway.upstream import Upstream

OPENAI_PREFIXES = ("/v1/chat/completions", "/v1/models", "/v1/completions", "/v1/embeddings")

log = get_logger(__name__)


async def _every(seconds: float, job: object) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await job()  # type: ignore[operator]
        except Exception:
            log.exception("gateway.background_job_failed")


def create_app(settings: Settings | None = None) -> HotPath:
    settings = settings or get_settings()
    init_process("gateway", "api", settings)
    tokens = TokenService(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Load the tokenizer now: its first use reads the BPE table (most of a second, synchronously),
        # which would stall every request in flight behind the first reservation estimate.
        count_text_tokens("warm up")
        engine = async_engine(settings, "gateway.api")
        sessionmaker = async_session_factory(engine)
        store = RedisStore(
            settings.limits_redis_url,
            connect_timeout=settings.redis_connect_timeout,
            command_timeout=settings.redis_command_timeout,
            breaker_seconds=settings.limits_breaker_seconds,
        )
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await store.load_scripts()
            await store.warm_up()
        limiter = Limiter(store, settings)
        directory = Directory(sessionmaker, limiter, tokens, settings)
        await directory.load_plans()
        upstream = Upstream(
            connect_timeout=settings.upstream_connect_timeout,
            read_timeout=settings.upstream_timeout,
            max_connections=settings.upstream_max_connections,
            idle_timeout=settings.upstream_idle_timeout,
        )
        app.state.gw = Gateway(
            settings=settings,
            sessionmaker=sessionmaker,
            tokens=tokens,
            external=ExternalIssuer(settings) if settings.oidc_issuer and settings.oidc_jwks_url else None,
            store=store,
            limiter=limiter,
            directory=directory,
            upstream=upstream,
        )
        app.state.readiness_checks = {"database": lambda: ping(engine)}
        limiter.start()
        key_use = asyncio.get_running_loop().create_task(_every(60.0, directory.flush_key_use))
        yield
        key_use.cancel()
        await limiter.stop()
        with contextlib.suppress(Exception):
            await directory.flush_key_use()
        await upstream.close()
        await store.close()
        await engine.dispose()

    # Parley's own middleware records the span, metrics and access log of every request; FastAPI's
    # native instrumentation would record them a second time, on the hot path of every forwarded call.
    app = create_service_app(service="gateway", lifespan=lifespan, openai_prefixes=OPENAI_PREFIXES)
    app.state.settings = settings
    app.include_router(auth.router)
    app.include_router(me.router)
    app.include_router(api_keys.router)
    app.include_router(admin.router)
    web = settings.web_directory
    if web is not None:
        # Last, so every API route above wins over a file of the same path.
        app.mount("/", StaticFiles(directory=web, html=True), name="web")
    # The forwarded routes, which carry nearly all the traffic, are matched before FastAPI's.
    return HotPath(app, proxy.routes(), service="gateway")
