"""The routing table: which providers serve a model, in the order they are tried.

Each provider is any OpenAI-compatible base URL with its own key, timeout and retry budget, reached with
its own ``AsyncOpenAI`` client (its own connection pool). The SDK's own retries are off: the caller in
:mod:`parley_chat.calls` retries and falls back itself, so it can stop retrying once a stream has started.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx2
from openai import AsyncOpenAI
from parley_common.auth.internal import InternalIdentity
from parley_common.errors import Problem
from parley_common.logs import get_logger

from parley_chat.config import OFFLINE_MODEL, ProviderConfig, Settings

log = get_logger(__name__)

WILDCARD = "*"


@dataclass(frozen=True)
class Provider:
    name: str
    client: AsyncOpenAI
    max_retries: int
    models: frozenset[str]
    offline: bool = False

    def serves(self, model: str) -> bool:
        return WILDCARD in self.models or model in self.models


@dataclass(frozen=True)
class Route:
    """Where one request goes: the model asked for, the model used, and the providers to try."""

    requested: str
    model: str
    providers: tuple[Provider, ...]


def _client(config: ProviderConfig) -> AsyncOpenAI:
    timeout = httpx2.Timeout(config.timeout, connect=config.connect_timeout)
    return AsyncOpenAI(
        base_url=config.base_url,
        api_key=config.api_key.get_secret_value() if config.api_key else "",
        timeout=timeout,
        max_retries=0,
        # openai 3 speaks through its own httpx fork (httpx2). Redirects are not followed: a provider URL
        # that redirects is a misconfiguration, and the key must not travel to wherever it points.
        http_client=httpx2.AsyncClient(
            timeout=timeout,
            limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=200),
            follow_redirects=False,
        ),
    )


class Router:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.offline = settings.offline
        self.providers = [
            Provider(
                name=config.name,
                client=_client(config),
                max_retries=config.max_retries,
                models=frozenset(config.models),
                offline=self.offline,
            )
            for config in settings.routing_table()
        ]
        if self.offline:
            log.warning(
                "provider.offline_model",
                base_url=settings.offline_model_url,
                hint="no provider configured: answers come from the built-in offline model",
            )

    @property
    def default_model(self) -> str:
        return OFFLINE_MODEL if self.offline else self.settings.default_model

    def named_models(self) -> list[str]:
        """Models the routing table names explicitly (a wildcard provider serves any model)."""
        if self.offline:
            return [OFFLINE_MODEL]
        seen: dict[str, None] = {}
        for provider in self.providers:
            for model in sorted(provider.models - {WILDCARD}):
                seen.setdefault(model)
        return list(seen)

    def visible_models(self, caller: InternalIdentity) -> list[str]:
        """What ``GET /v1/models`` lists: the plan's allowed models that something serves."""
        if self.offline:
            return [OFFLINE_MODEL]
        plan = caller.plan
        if plan.allowed_models:
            candidates = list(plan.allowed_models)
        else:
            candidates = [plan.default_model or self.default_model, *self.named_models()]
        return [m for m in dict.fromkeys(candidates) if self.routable(plan.model_routes.get(m, m))]

    def routable(self, model: str) -> bool:
        return any(p.serves(model) for p in self.providers)

    def allowed(self, model: str, caller: InternalIdentity) -> bool:
        if self.offline and model == OFFLINE_MODEL:
            return True
        allowed = caller.plan.allowed_models
        return not allowed or model in allowed

    def resolve(self, requested: str | None, caller: InternalIdentity) -> Route:
        """The plan's rules, then the routing table: 404 ``model_not_found`` when nothing may serve it."""
        plan = caller.plan
        name = requested or plan.default_model or self.default_model
        if not self.allowed(name, caller):
            raise Problem(
                404, "model_not_found", f"The model `{name}` is not available on your plan.", param="model"
            )
        used = plan.model_routes.get(name, name)
        providers = tuple(p for p in self.providers if p.serves(used))
        if not providers:
            raise Problem(404, "model_not_found", f"The model `{name}` does not exist.", param="model")
        return Route(requested=name, model=OFFLINE_MODEL if self.offline else used, providers=providers)

    async def close(self) -> None:
        for provider in self.providers:
            await provider.client.close()
