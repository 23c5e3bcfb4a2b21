"""What chat's tests share: a platform with a routing table over two fake providers, callers with any
plan, and reads of what chat wrote (its outbox, its messages).

Callers are made the way the gateway makes them: an internal token signed with the session's gateway key,
carrying the user id and plan claims. The official ``openai`` SDK then talks to chat with that token as
its API key, which lets a test choose the plan (cache policy, allowed models, routes) the gateway on this
branch does not yet attach. Tests of the path through the gateway use real accounts instead.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
from parley_common.auth.internal import InternalIdentity, PlanClaims, mint_internal_token
from parley_common.auth.keys import load_signing_keys
from parley_common.testing.net import free_port
from parley_common.testing.processes import ProcessManager, venv_command

from tests.support.db import query
from tests.support.platform import Platform, PlatformConfig, start_fake_provider, start_platform

PRIMARY_KEY = "key-primary"
SECONDARY_KEY = "key-secondary"
MODELS = "gpt-4o-mini,gpt-4o,tiny-context"
TINY_CONTEXT = 300  # tokens of the "tiny-context" model, so history trimming shows after a few turns


@dataclass
class ChatStack:
    platform: Platform
    config: PlatformConfig
    providers: dict[str, str]  # name -> base URL of the fake provider
    manager: ProcessManager
    chat_env: dict[str, str]

    @property
    def chat_url(self) -> str:
        return self.platform.chat_url

    @property
    def gateway_url(self) -> str:
        return self.platform.gateway_url

    def user(self, **plan: Any) -> User:
        return User.new(self, PlanClaims(**plan))

    def spawn_chat(self, name: str, env: dict[str, str], manager: ProcessManager | None = None) -> str:
        """Another chat process over the same providers and database, with ``env`` added; its base URL.

        It lives as long as ``manager`` (the stack's own by default)."""
        port = free_port()
        (manager or self.manager).spawn(
            name,
            [venv_command("parley-chat-api")],
            {**self.config.base_env(), **self.chat_env, "PARLEY_HTTP_PORT": str(port), **env},
            ready_url=f"http://127.0.0.1:{port}/readyz",
        )
        return f"http://127.0.0.1:{port}"


def routing_table(primary: str, secondary: str) -> list[dict[str, Any]]:
    return [
        {
            "name": "primary",
            "base_url": primary + "/v1",
            "api_key": PRIMARY_KEY,
            "timeout": 1.0,
            "max_retries": 1,
            "models": MODELS.split(","),
        },
        {
            "name": "secondary",
            "base_url": secondary + "/v1",
            "api_key": SECONDARY_KEY,
            "timeout": 5.0,
            "max_retries": 1,
            "models": ["gpt-4o-mini"],
        },
    ]


def start_stack(
    manager: ProcessManager, config: PlatformConfig, *, chat_env: dict[str, str] | None = None
) -> ChatStack:
    """Gateway + chat, chat routing over two fake providers (each checking its own key)."""
    _, secondary = start_fake_provider(
        manager, "--api-key", SECONDARY_KEY, "--models", MODELS, name="provider-secondary"
    )
    env = {
        "PARLEY_RETRY_BACKOFF_BASE": "0.05",
        "PARLEY_RETRY_BACKOFF_MAX": "0.5",
        "PARLEY_MODEL_CONTEXT_TOKENS": json.dumps({"tiny-context": TINY_CONTEXT}),
        **(chat_env or {}),
    }
    # start_platform starts the primary provider itself: choose its port so the routing table can name it.
    primary_port = free_port()
    primary = f"http://127.0.0.1:{primary_port}"
    env.setdefault("PARLEY_PROVIDERS", json.dumps(routing_table(primary, secondary)))
    platform = start_platform(
        manager,
        config,
        provider_args=("--api-key", PRIMARY_KEY, "--models", MODELS),
        with_relay=False,
        with_usage_worker=False,
        chat_env=env,
        provider_port=primary_port,
    )
    return ChatStack(platform, config, {"primary": primary, "secondary": secondary}, manager, env)


@dataclass
class User:
    stack: ChatStack
    user_id: uuid.UUID
    plan: PlanClaims
    token: str
    _clients: list[Any] = field(default_factory=list)

    @classmethod
    def new(cls, stack: ChatStack, plan: PlanClaims) -> User:
        user_id = uuid.uuid4()
        key = load_signing_keys(stack.config.signing_key_pem)[0]
        token = mint_internal_token(key, InternalIdentity(user_id=user_id, plan=plan), ttl=3600)
        return cls(stack, user_id, plan, token)

    def client(self, chat_url: str | None = None, **kwargs: Any) -> openai.OpenAI:
        """The official SDK, pointed at chat (the stack's, or ``chat_url``) with this user's internal token."""
        base = (chat_url or self.stack.chat_url) + "/v1"
        return openai.OpenAI(base_url=base, api_key=self.token, max_retries=0, **kwargs)

    def aclient(self, chat_url: str | None = None, **kwargs: Any) -> openai.AsyncOpenAI:
        base = (chat_url or self.stack.chat_url) + "/v1"
        return openai.AsyncOpenAI(base_url=base, api_key=self.token, max_retries=0, **kwargs)

    def http(self, chat_url: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=chat_url or self.stack.chat_url,
            headers={"authorization": f"Bearer {self.token}"},
            timeout=30,
        )

    def events(self, event_type: str = "usage.tokens_consumed.v1") -> list[dict[str, Any]]:
        return outbox_events(self.stack.config.database_url, self.user_id, event_type)


def outbox_events(database_url: str, user_id: uuid.UUID | str, event_type: str) -> list[dict[str, Any]]:
    rows = query(
        database_url,
        "SELECT payload FROM chat.outbox WHERE event_type = :t AND payload->>'user_id' = :u ORDER BY id",
        t=event_type,
        u=str(user_id),
    )
    return [row["payload"] for row in rows]


# -- the fake providers ---------------------------------------------------------------------------------


def configure(url: str, **behaviour: Any) -> None:
    """Reset a fake provider to its start-up behaviour, then apply ``behaviour``."""
    httpx.post(url + "/_fake/config", json={"reset": True, **behaviour}, timeout=5).raise_for_status()


def calls(url: str, request_id: str | None = None) -> list[dict[str, Any]]:
    stats = httpx.get(url + "/_fake/stats", timeout=10).json()
    found: list[dict[str, Any]] = stats["calls"]
    if request_id is not None:
        found = [c for c in found if c["headers"].get("x-request-id") == request_id]
    return found


def new_request_id() -> str:
    return "test-" + uuid.uuid4().hex


# -- SSE read by hand (what the SDK hides) ----------------------------------------------------------------


def sse_data(lines: Iterator[str]) -> list[str]:
    """The ``data:`` payloads of an event stream, in order."""
    return [line[len("data: ") :] for line in lines if line.startswith("data: ")]
