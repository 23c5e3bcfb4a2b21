"""Notify settings (``PARLEY_*`` environment variables)."""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any

from parley_common.messaging.worker import WorkerSettings
from parley_common.settings import DatabaseSettings, dev_default, load_settings
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode


class Settings(WorkerSettings, DatabaseSettings):
    # One message in flight per process: a kill -9 can then duplicate at most one email (the one whose
    # SMTP transaction ended but whose sent-log row was not yet committed). Scale with more processes.
    worker_concurrency: int = Field(1, ge=1, description="Emails sent at once per worker process")

    smtp_host: str | None = dev_default(
        None, "SMTP server; unset, mail is written to the file outbox (PARLEY_MAIL_OUTBOX_DIR) instead"
    )
    smtp_port: int = Field(587, description="SMTP port (587 submission with STARTTLS, 465 implicit TLS, 25)")
    smtp_starttls: bool = Field(True, description="Upgrade the connection with STARTTLS before sending")
    smtp_ssl: bool = Field(False, description="Implicit TLS from the first byte (port 465)")
    smtp_username: str | None = Field(None, description="SMTP AUTH user (AUTH only when set)")
    smtp_password: SecretStr | None = Field(None, description="SMTP AUTH password")
    smtp_timeout: float = Field(10.0, gt=0, description="Seconds for each SMTP command")
    smtp_ca_file: str | None = Field(None, description="CA bundle for the SMTP server's certificate")
    smtp_retry_delays: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [1.0, 5.0, 15.0, 30.0, 60.0],
        description="Backoff (seconds) between tries after a transient SMTP failure (4xx, connection); "
        "then the message returns to the queue (its delivery limit, then the dead-letter queue)",
    )

    mail_from: str = Field("Parley <no-reply@parley.local>", description="From: of every email")
    mail_message_id_domain: str = Field(
        "parley.local", description="Right-hand side of Message-IDs (<event id>@this)"
    )
    mail_outbox_dir: str = Field(
        ".run/mail", description="File outbox (one .eml per email) used when PARLEY_SMTP_HOST is unset"
    )
    public_url: str = Field("http://localhost:8000", description="Base URL of Parley used in email links")

    @field_validator("smtp_retry_delays", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.strip("[]").split(",") if part.strip()]
        return value


@lru_cache
def get_settings() -> Settings:
    return load_settings(Settings)
