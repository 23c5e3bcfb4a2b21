"""Chat settings (``PARLEY_*`` environment variables)."""

from __future__ import annotations

from functools import lru_cache

from parley_common.api import HttpServerSettings
from parley_common.settings import DatabaseSettings, InternalAuthSettings, RabbitSettings, load_settings
from pydantic import Field, SecretStr


class Settings(HttpServerSettings, DatabaseSettings, RabbitSettings, InternalAuthSettings):
    http_port: int = Field(8001, description="Listen port")
    openai_base_url: str | None = Field(
        None, description="OpenAI-compatible provider base URL (e.g. https://api.openai.com/v1)"
    )
    openai_api_key: SecretStr | None = Field(None, description="API key for that provider")
    offline_model_url: str = Field(
        "http://127.0.0.1:8090/v1",
        description="The built-in offline model (the fake provider make run starts) used when no provider is set",
    )
    default_model: str = Field("gpt-4o-mini", description="Model used when a request names none")
    provider_timeout: float = Field(
        60.0, description="Seconds to wait for a provider's (next) response bytes"
    )
    provider_max_retries: int = Field(
        2, ge=0, description="Retries on 429/5xx/timeouts before the first byte"
    )

    @property
    def provider_name(self) -> str:
        return "openai" if self.openai_base_url or self.openai_api_key else "offline"


@lru_cache
def get_settings() -> Settings:
    return load_settings(Settings)
