"""Gateway settings (``PARLEY_*`` environment variables)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from parley_common.api import HttpServerSettings
from parley_common.settings import (
    DatabaseSettings,
    RabbitSettings,
    RedisSettings,
    dev_default,
    load_settings,
)
from pydantic import Field, SecretStr

FailurePolicy = Literal["closed", "local"]


def _repo_web_dir() -> Path:
    # services/gateway/src/parley_gateway/config.py → the repository root holds web/ (development only).
    return Path(__file__).resolve().parents[4] / "web"


class Settings(HttpServerSettings, DatabaseSettings, RedisSettings, RabbitSettings):
    http_port: int = Field(8000, description="Listen port")
    http_reuse_port: bool = Field(
        False, description="Bind with SO_REUSEPORT so several gateway processes share one port"
    )

    # Tokens
    jwt_private_keys: SecretStr | None = dev_default(
        None,
        "PEM text of the ES256 signing keys; the first signs, the others stay in the JWKS until their tokens "
        "expire. make run generates one into .run/jwt-key.pem; unset otherwise, a process makes a throwaway key",
    )
    jwt_issuer: str = Field("parley", description="iss of access tokens")
    jwt_audience: str = Field("parley-api", description="aud of access tokens")
    access_token_ttl: int = Field(900, ge=60, le=3600, description="Access token lifetime in seconds")
    refresh_token_ttl: int = Field(
        30 * 86400, ge=3600, description="Refresh token lifetime in seconds (each refresh starts it again)"
    )
    internal_token_ttl: int = Field(60, ge=10, le=600, description="Lifetime of tokens forwarded to services")
    oidc_issuer: str | None = Field(None, description="An external OIDC issuer whose tokens are accepted")
    oidc_jwks_url: str | None = Field(None, description="JWKS URL of that issuer")
    oidc_audience: str | None = Field(None, description="aud the external tokens must carry")
    oidc_algorithms: list[str] = Field(["RS256", "ES256"], description="Algorithms accepted from that issuer")
    oidc_jwks_cooldown: float = Field(30.0, gt=0, description="Least seconds between JWKS refetches")

    # Accounts
    signup_plan: str = Field("free", description="Plan of a newly registered account")
    auth_ip_per_minute: int = Field(
        30, ge=1, description="Login and register attempts per client IP a minute"
    )
    auth_email_per_minute: int = Field(10, ge=1, description="Login and register attempts per email a minute")
    identity_cache_seconds: float = Field(
        60.0, gt=0, description="Longest a replica trusts cached users, plans and API keys without Redis"
    )

    # Services behind the gateway
    chat_url: str = Field("http://127.0.0.1:8001", description="Base URL of the chat service")
    usage_url: str = Field("http://127.0.0.1:8002", description="Base URL of the usage API")
    webhooks_url: str = Field("http://127.0.0.1:8003", description="Base URL of the webhooks API")
    upstream_timeout: float = Field(300.0, description="Seconds to wait for a service's next bytes")
    upstream_connect_timeout: float = Field(3.0, description="Seconds to connect to a service")
    upstream_max_connections: int = Field(1000, ge=1, description="Pooled connections to the services")
    upstream_idle_timeout: float = Field(
        30.0, gt=0, description="Seconds a pooled connection may sit unused (below the services' keep-alive)"
    )
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest request body forwarded")
    max_json_depth: int = Field(32, ge=2, description="Deepest JSON nesting accepted in a request body")

    # Limits
    redis_limits_url: SecretStr | None = Field(
        None,
        description="Redis for rate limits and quota counters (default: PARLEY_REDIS_URL); the usage "
        "service must reconcile the same one",
    )
    limits_window_seconds: float = Field(
        60.0, gt=0, description="Length of the 'per minute' window (tests compress it)"
    )
    limits_failure_requests: FailurePolicy = Field(
        "local", description="When Redis fails: 'closed' (503) or 'local' (conservative per-replica limit)"
    )
    limits_failure_tokens: FailurePolicy = Field("local", description="Same, for tokens per minute")
    limits_failure_streams: FailurePolicy = Field("local", description="Same, for concurrent streams")
    limits_failure_quota: FailurePolicy = Field(
        "local", description="Same, for token quotas (also while usage has not seeded the counters)"
    )
    limits_local_share: float = Field(
        0.5, gt=0, le=1, description="Share of each limit one replica grants on its own while Redis is away"
    )
    limits_local_quota_fraction: float = Field(
        0.05,
        gt=0,
        le=1,
        description="While quotas cannot be checked, the share of a user's quota a replica grants when it "
        "has no recent figure for them (times limits_local_share)",
    )
    limits_lease_seconds: float = Field(
        30.0, gt=1, description="A stream slot or reservation outlives a dead replica by at most this"
    )
    limits_breaker_seconds: float = Field(
        0.2, gt=0, description="After a Redis failure, requests skip Redis; it is probed this often"
    )

    # Development web UI
    serve_web: bool | None = Field(None, description="Serve web/ at / (default: on unless PARLEY_ENV=prod)")
    web_dir: str | None = Field(None, description="Directory of the web UI (default: <repo>/web)")

    @property
    def limits_redis_url(self) -> str:
        return (self.redis_limits_url or self.redis_url).get_secret_value()

    @property
    def web_directory(self) -> Path | None:
        enabled = self.serve_web if self.serve_web is not None else self.env != "prod"
        if not enabled:
            return None
        path = Path(self.web_dir) if self.web_dir else _repo_web_dir()
        return path if path.is_dir() else None


@lru_cache
def get_settings() -> Settings:
    return load_settings(Settings)
