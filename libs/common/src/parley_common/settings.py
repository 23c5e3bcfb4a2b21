"""Settings shared by every Parley process.

Every process reads its configuration from ``PARLEY_*`` environment variables through one
``BaseSettings`` subclass per service, composed from the mixins below. Secrets are ``SecretStr`` so they
never reach a log line or a ``repr``. Fields whose default only makes sense on a laptop are marked with
:func:`dev_default`; in production mode (``PARLEY_ENV=prod``) a process refuses to start while any of them
still holds its default.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_DEV_MARK = "parley_dev_default"


def dev_default(default: Any, description: str) -> Any:
    """A field default that is fine for development and refused in production."""
    return Field(default, description=description, json_schema_extra={_DEV_MARK: True})


def as_psycopg_url(value: Any) -> Any:
    # One URL scheme for sync and async engines: psycopg 3 serves both.
    raw = value.get_secret_value() if isinstance(value, SecretStr) else value
    if isinstance(raw, str):
        for prefix in ("postgresql://", "postgres://"):
            if raw.startswith(prefix):
                return SecretStr("postgresql+psycopg://" + raw[len(prefix) :])
    return value


class ParleySettings(BaseSettings):
    """Base of every service's settings: environment, region, logging and tracing."""

    model_config = SettingsConfigDict(env_prefix="PARLEY_", extra="ignore", frozen=True)

    env: Literal["dev", "test", "prod"] = Field(
        "dev", description="dev, test or prod; prod refuses dev defaults"
    )
    region: str = Field("local", description="Region name, stamped on every event and log line")
    log_level: str = Field("INFO", description="Root log level")
    log_format: Literal["json", "console"] = Field("json", description="json (one object a line) or console")
    otel_exporter: Literal["none", "console", "otlp"] = Field(
        "none", description="Where spans go: nowhere (ids still propagate), stderr, or an OTLP/HTTP collector"
    )
    otel_endpoint: str | None = Field(None, description="OTLP/HTTP traces endpoint when otel_exporter=otlp")

    @model_validator(mode="after")
    def _refuse_dev_defaults_in_production(self) -> ParleySettings:
        if self.env != "prod":
            return self
        offending = [
            f"PARLEY_{name.upper()}"
            for name, field in type(self).model_fields.items()
            if isinstance(field.json_schema_extra, dict)
            and field.json_schema_extra.get(_DEV_MARK)
            and getattr(self, name) == field.default
        ]
        if offending:
            raise ValueError(
                "production mode (PARLEY_ENV=prod) refuses development defaults; set " + ", ".join(offending)
            )
        return self


class DatabaseSettings(BaseModel):
    """PostgreSQL: one database, one schema per service."""

    database_url: SecretStr = dev_default(
        SecretStr("postgresql+psycopg://postgres@127.0.0.1:5432/parley"),
        "PostgreSQL URL for writes (postgresql+psycopg://user:pass@host:port/db)",
    )
    database_read_url: SecretStr | None = Field(
        None, description="Optional read-replica URL for history reads; writes never go there"
    )
    database_pool_size: int = Field(10, ge=1, description="Connections kept open per process")
    database_max_overflow: int = Field(10, ge=0, description="Extra connections allowed under burst")

    @field_validator("database_url", "database_read_url", mode="before")
    @classmethod
    def _normalise_url(cls, value: Any) -> Any:
        return as_psycopg_url(value)


class RedisSettings(BaseModel):
    """Redis, with explicit timeouts so no request waits on a dead server."""

    redis_url: SecretStr = dev_default(SecretStr("redis://127.0.0.1:6379/0"), "Redis URL")
    redis_key_prefix: str = Field("parley:", description="Prefix of every key this deployment writes")
    redis_connect_timeout: float = Field(0.25, gt=0, description="Seconds to open a Redis connection")
    redis_command_timeout: float = Field(0.25, gt=0, description="Seconds to wait for one Redis reply")


class RabbitSettings(BaseModel):
    """RabbitMQ, reached by the outbox relays (aio-pika) and the Celery workers."""

    rabbitmq_url: SecretStr = dev_default(SecretStr("amqp://guest:guest@127.0.0.1:5672/"), "AMQP URL")


class InternalAuthSettings(BaseModel):
    """How a service behind the gateway verifies the gateway's short-lived internal tokens."""

    internal_jwks_url: str = dev_default(
        "http://127.0.0.1:8000/.well-known/jwks.json", "Where the gateway publishes its signing keys"
    )
    internal_jwks: str | None = Field(
        None, description="The gateway's JWKS as inline JSON; when set, used instead of internal_jwks_url"
    )


S = TypeVar("S", bound=ParleySettings)


class SettingsError(RuntimeError):
    """Raised when the environment holds invalid settings; the message never echoes a value."""


def load_settings(cls: type[S]) -> S:
    """Build ``cls`` from the environment, failing with a message that names variables, not values.

    Pydantic's own error text quotes the input, which would print database passwords into logs.
    """
    try:
        return cls()
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(part) for part in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
