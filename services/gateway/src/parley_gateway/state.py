"""What one gateway process holds for its whole life, built in the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from parley_gateway.config import Settings
from parley_gateway.directory import Directory
from parley_gateway.limits.limiter import Limiter
from parley_gateway.limits.store import RedisStore
from parley_gateway.tokens import ExternalIssuer, TokenService
from parley_gateway.upstream import Upstream


@dataclass
class Gateway:
    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    tokens: TokenService
    external: ExternalIssuer | None
    store: RedisStore
    limiter: Limiter
    directory: Directory
    upstream: Upstream
