"""Chat settings (``PARLEY_*`` environment variables)."""

from __future__ import annotations

from functools import lru_cache

from parley_common.api import HttpServerSettings
from parley_common.messaging.batch import BatchWorkerSettings
from parley_common.settings import (
    DatabaseSettings,
    InternalAuthSettings,
    RabbitSettings,
    RedisSettings,
    load_settings,
)
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

OFFLINE_MODEL = "parley-offline"

# Context windows of well-known models (tokens); anything else uses PARLEY_DEFAULT_CONTEXT_TOKENS.
KNOWN_CONTEXT_TOKENS = {
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-4.1-mini": 1_047_576,
    "gpt-4.1-nano": 1_047_576,
    "o3-mini": 200_000,
    OFFLINE_MODEL: 8_192,
}


class ProviderConfig(BaseModel):
    """One OpenAI-compatible provider of the routing table (an item of ``PARLEY_PROVIDERS``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")
    base_url: str = Field(description="OpenAI-compatible base URL, e.g. https://api.openai.com/v1")
    api_key: SecretStr | None = None
    timeout: float = Field(
        60.0, gt=0, description="Seconds to wait for the answer, or for a stream's next bytes"
    )
    connect_timeout: float = Field(5.0, gt=0)
    max_retries: int = Field(2, ge=0, le=10, description="Retries on 429/5xx/timeouts before falling back")
    models: list[str] = Field(
        default_factory=lambda: ["*"], min_length=1, description="Models it serves, in routing order; * = any"
    )


class Settings(
    BatchWorkerSettings,
    HttpServerSettings,
    DatabaseSettings,
    RabbitSettings,
    InternalAuthSettings,
    RedisSettings,
):
    http_port: int = Field(8001, description="Listen port")
    worker_concurrency: int = Field(
        1, ge=1, description="Consumer processes per worker (chat: one, account erasures are rare)"
    )

    # Providers
    providers: list[ProviderConfig] = Field(
        default_factory=list,
        description="Routing table as JSON: [{name, base_url, api_key, timeout, max_retries, models}]; "
        "a model is tried on every provider listing it (or *), in order",
    )
    openai_base_url: str | None = Field(
        None,
        description="One-provider shorthand when PARLEY_PROVIDERS is empty (e.g. https://api.openai.com/v1)",
    )
    openai_api_key: SecretStr | None = Field(None, description="API key for that provider")
    offline_model_url: str = Field(
        "http://127.0.0.1:8090/v1",
        description="The built-in offline model (the fake provider make run starts), used when no provider is set",
    )
    default_model: str = Field(
        "gpt-4o-mini", description="Model used when neither the request nor the plan names one"
    )
    provider_timeout: float = Field(60.0, gt=0, description="Timeout of the shorthand provider (seconds)")
    provider_max_retries: int = Field(2, ge=0, description="Retries of the shorthand provider")
    retry_backoff_base: float = Field(
        0.25, ge=0, description="First retry waits up to this many seconds (full jitter, doubling)"
    )
    retry_backoff_max: float = Field(
        4.0,
        ge=0,
        description="Longest wait between retries; a longer Retry-After moves on to the next provider",
    )

    # Conversations
    model_context_tokens: dict[str, int] = Field(
        default_factory=dict, description="Context window per model (JSON), added to the built-in table"
    )
    default_context_tokens: int = Field(8_192, ge=256, description="Context window of models not listed")
    default_output_reserve: int = Field(
        1_024, ge=16, description="Tokens kept free for the reply when a turn sets no max_tokens"
    )
    history_max_messages: int = Field(
        500, ge=2, description="Most recent messages read when building a conversation's prompt"
    )

    # Response cache
    cache_redis_url: SecretStr | None = Field(
        None, description="Redis for the response cache; defaults to PARLEY_REDIS_URL"
    )
    cache_ttl_seconds: int = Field(86_400, ge=1, description="How long a cached response is served")
    cache_max_bytes: int = Field(262_144, ge=1_024, description="Responses larger than this are not cached")
    cache_pause_after_error: float = Field(
        5.0, ge=0, description="After a Redis failure, skip the cache this many seconds (fail open, fast)"
    )
    cache_semantic_threshold: float = Field(
        0.92,
        ge=0.5,
        le=1.0,
        description="Cosine similarity a reworded question needs to get a cached answer (semantic plans)",
    )
    cache_semantic_max_entries: int = Field(
        64,
        ge=1,
        le=4096,
        description="Questions kept per user and conversation context for the semantic cache",
    )

    rag_top_k: int = Field(4, ge=1, le=20, description="Document excerpts retrieved for a turn, at most")
    rag_min_score: float = Field(
        0.25,
        ge=-1.0,
        le=1.0,
        description="Cosine similarity an excerpt needs to be retrieved (lower ones are left out)",
    )
    rag_context_share: float = Field(
        0.5,
        gt=0,
        le=0.9,
        description="Share of a turn's prompt budget that retrieved excerpts may take",
    )
    rag_chunk_words: int = Field(120, ge=20, le=180, description="Words per document excerpt (chunk)")
    rag_chunk_overlap_words: int = Field(20, ge=0, le=60, description="Words repeated between chunks")

    @field_validator("providers", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return [] if value in ("", None) else value

    @property
    def offline(self) -> bool:
        """No provider configured: the built-in offline model answers every model."""
        return not self.providers and not (self.openai_base_url or self.openai_api_key)

    def routing_table(self) -> list[ProviderConfig]:
        if self.providers:
            return list(self.providers)
        if self.offline:
            return [
                ProviderConfig(
                    name="offline",
                    base_url=self.offline_model_url,
                    api_key=SecretStr("offline"),
                    timeout=self.provider_timeout,
                    max_retries=self.provider_max_retries,
                    models=["*"],
                )
            ]
        return [
            ProviderConfig(
                name="openai",
                base_url=self.openai_base_url or "https://api.openai.com/v1",
                api_key=self.openai_api_key,
                timeout=self.provider_timeout,
                max_retries=self.provider_max_retries,
                models=["*"],
            )
        ]

    def context_tokens(self, model: str) -> int:
        return (
            self.model_context_tokens.get(model)
            or KNOWN_CONTEXT_TOKENS.get(model)
            or self.default_context_tokens
        )

    def prompt_budget(self, model: str, max_output_tokens: int | None) -> int:
        """Tokens the prompt of a call may use: the context window less what is kept for the reply."""
        context = self.context_tokens(model)
        return context - (max_output_tokens or min(self.default_output_reserve, context // 4))

    @property
    def cache_url(self) -> SecretStr:
        return self.cache_redis_url or self.redis_url


@lru_cache
def get_settings() -> Settings:
    return load_settings(Settings)
