"""Webhooks settings (``PARLEY_*`` environment variables), one class for the API, worker, beat and relay."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Annotated, Any

from parley_common.api import HttpServerSettings
from parley_common.messaging.worker import WorkerSettings
from parley_common.settings import DatabaseSettings, InternalAuthSettings, dev_default, load_settings
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from parley_webhooks.ssrf import UrlPolicy

# Standard Webhooks' reference schedule (Svix): 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, about 27.6 h in all.
DEFAULT_RETRY_SCHEDULE = [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]


def _split_list(value: Any) -> Any:
    # "5,300,1800" as well as the JSON form pydantic-settings expects for list fields.
    if isinstance(value, str) and not value.lstrip().startswith("["):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(HttpServerSettings, WorkerSettings, DatabaseSettings, InternalAuthSettings):
    http_port: int = Field(8003, description="Listen port")
    # Deliveries wait on the network, not the CPU: a thread pool keeps many in flight per process.
    worker_concurrency: int = Field(8, ge=1, description="Delivery threads per worker process")

    # Delivery
    webhooks_retry_schedule: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE),
        description="Seconds before each retry after a failed attempt; one entry per retry",
    )
    webhooks_retry_jitter: float = Field(
        0.1, ge=0, lt=1, description="Each retry delay is multiplied by a random factor in 1 ± this"
    )
    webhooks_retry_after_max: float = Field(
        86400.0, gt=0, description="Longest Retry-After (429/503) honoured, in seconds"
    )
    webhooks_disable_after: float = Field(
        5 * 86400.0,
        gt=0,
        description="Seconds an endpoint may fail without one success before it is disabled",
    )
    webhooks_timeout: float = Field(15.0, gt=0, description="Seconds one attempt may take, response included")
    webhooks_connect_timeout: float = Field(5.0, gt=0, description="Seconds to open the connection")
    webhooks_response_cap_bytes: int = Field(
        16384, ge=0, description="Bytes of a receiver's response read (and stored); the rest is never read"
    )
    webhooks_poll_interval: float = Field(
        1.0, gt=0, description="Seconds between beat's polls for deliveries that are due"
    )
    webhooks_dispatch_batch: int = Field(500, ge=1, description="Deliveries handed to workers per poll")
    webhooks_lease_seconds: float = Field(
        120.0,
        gt=0,
        description="A dispatched delivery is dispatched again if not finished by then (must exceed the timeout)",
    )
    webhooks_secret_bytes: int = Field(
        32, ge=24, le=64, description="Random bytes in a new signing secret (whsec_ + base64)"
    )
    webhooks_encryption_keys: SecretStr = dev_default(
        SecretStr("cGFybGV5LWRldi13ZWJob29rcy1zZWNyZXRzLWtleTE="),
        "Fernet keys, comma-separated, that encrypt endpoint signing secrets at rest: the first encrypts, all decrypt",
    )
    webhooks_secret_overlap: float = Field(
        86400.0, ge=0, description="Seconds a rotated-out secret keeps signing next to the new one"
    )
    webhooks_max_endpoints_per_user: int = Field(50, ge=1, description="Endpoints one user may register")
    webhooks_tls_ca_file: str | None = Field(
        None, description="CA bundle for verifying receivers (default: the system's trust store)"
    )

    # Test-only relaxations: off by default, refused in production.
    webhooks_allow_http: bool = Field(False, description="TEST ONLY: accept http:// endpoint URLs")
    webhooks_test_allow_cidrs: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="TEST ONLY: addresses exempt from the SSRF deny list (e.g. 127.0.0.1/32 for local receivers)",
    )
    webhooks_test_resolver: Annotated[dict[str, list[str]], NoDecode] = Field(
        default_factory=dict,
        description='TEST ONLY: host → addresses used instead of DNS, e.g. {"hook.test": ["127.0.0.1"]}',
    )

    # Inbound billing webhooks (Stripe-style signatures)
    billing_webhook_secret: SecretStr = dev_default(
        SecretStr("whsec_parley_dev_billing"), "Signing secret the billing provider shares with us"
    )
    billing_signature_tolerance: float = Field(
        300.0, gt=0, description="Seconds a billing event's signed timestamp may differ from our clock"
    )
    billing_price_plans: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=lambda: {"price_parley_pro": "pro", "price_parley_team": "team"},
        description='Billing price id → Parley plan name, e.g. {"price_1Pxyz": "pro"}',
    )
    billing_fallback_plan: str = Field("free", description="Plan given when a subscription ends")
    billing_max_body_bytes: int = Field(262144, ge=1024, description="Largest inbound billing body accepted")

    @field_validator("webhooks_retry_schedule", "webhooks_test_allow_cidrs", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("webhooks_test_resolver", "billing_price_plans", mode="before")
    @classmethod
    def _json_maps(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _test_settings_stay_out_of_production(self) -> Settings:
        if self.env == "prod":
            on = [
                f"PARLEY_{name.upper()}"
                for name in ("webhooks_allow_http", "webhooks_test_allow_cidrs", "webhooks_test_resolver")
                if getattr(self, name)
            ]
            if on:
                raise ValueError("test-only settings are refused in production: " + ", ".join(on))
        if self.webhooks_lease_seconds <= self.webhooks_timeout + self.webhooks_connect_timeout:
            raise ValueError("PARLEY_WEBHOOKS_LEASE_SECONDS must exceed the attempt timeout")
        return self

    def url_policy(self) -> UrlPolicy:
        return UrlPolicy(
            allow_http=self.webhooks_allow_http,
            allow_cidrs=self.webhooks_test_allow_cidrs,
            resolver=self.webhooks_test_resolver,
        )


@lru_cache
def get_settings() -> Settings:
    return load_settings(Settings)
