"""Gateway settings (``PARLEY_*`` environment variables)."""

from __future__ import annotations

from functools import lru_cache

from parley_common.api import HttpServerSettings
from parley_common.settings import DatabaseSettings, dev_default, load_settings
from pydantic import Field, SecretStr


class Settings(HttpServerSettings, DatabaseSettings):
    http_port: int = Field(8000, description="Listen port")
    jwt_private_keys: SecretStr | None = dev_default(
        None,
        "PEM text of the ES256 signing keys; the first signs, the others stay in the JWKS until their tokens "
        "expire. make run generates one into .run/jwt-key.pem; unset otherwise, a process makes a throwaway key",
    )
    jwt_issuer: str = Field("parley", description="iss of access tokens")
    jwt_audience: str = Field("parley-api", description="aud of access tokens")
    access_token_ttl: int = Field(900, ge=60, le=3600, description="Access token lifetime in seconds")
    internal_token_ttl: int = Field(60, ge=10, le=600, description="Lifetime of tokens forwarded to services")
    chat_url: str = Field("http://127.0.0.1:8001", description="Base URL of the chat service")
    upstream_timeout: float = Field(300.0, description="Seconds to wait on a service (whole streamed reply)")
    upstream_connect_timeout: float = Field(3.0, description="Seconds to connect to a service")


@lru_cache
def get_settings() -> Settings:
    return load_settings(Settings)
