"""Settings: test-only relaxations and development defaults are refused in production."""

from __future__ import annotations

import pytest
from parley_common.settings import SettingsError, load_settings
from parley_notify.config import Settings as NotifySettings
from parley_webhooks.config import Settings as WebhooksSettings

PROD = {
    "PARLEY_ENV": "prod",
    "PARLEY_DATABASE_URL": "postgresql://parley:pw@db:5432/parley",
    "PARLEY_RABBITMQ_URL": "amqp://parley:pw@mq:5672/",
    "PARLEY_INTERNAL_JWKS_URL": "http://gateway:8000/.well-known/jwks.json",
    "PARLEY_BILLING_WEBHOOK_SECRET": "whsec_real_secret",
    "PARLEY_WEBHOOKS_ENCRYPTION_KEYS": "b3RoZXItdGhhbi10aGUtZGV2LWtleS0zMi1ieXRlcyE=",
}


def test_production_webhooks_settings_load_when_complete(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in PROD.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(WebhooksSettings)
    assert settings.webhooks_retry_schedule == [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]
    assert settings.url_policy().allow_http is False


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PARLEY_WEBHOOKS_ALLOW_HTTP", "true"),
        ("PARLEY_WEBHOOKS_TEST_ALLOW_CIDRS", "127.0.0.1/32"),
        ("PARLEY_WEBHOOKS_TEST_RESOLVER", '{"a.test": ["127.0.0.1"]}'),
    ],
)
def test_test_only_settings_are_refused_in_production(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    for key, val in PROD.items():
        monkeypatch.setenv(key, val)
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        load_settings(WebhooksSettings)


@pytest.mark.parametrize("missing", ["PARLEY_BILLING_WEBHOOK_SECRET", "PARLEY_WEBHOOKS_ENCRYPTION_KEYS"])
def test_development_defaults_are_refused_in_production(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    for key, val in PROD.items():
        if key != missing:
            monkeypatch.setenv(key, val)
    with pytest.raises(SettingsError, match=missing):
        load_settings(WebhooksSettings)
    # Notify in production needs a real SMTP server: no file outbox.
    with pytest.raises(SettingsError, match="PARLEY_SMTP_HOST"):
        load_settings(NotifySettings)


def test_lists_read_as_comma_separated_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_WEBHOOKS_RETRY_SCHEDULE", "0.5, 1,2")
    monkeypatch.setenv("PARLEY_SMTP_RETRY_DELAYS", "0.1,0.2")
    assert load_settings(WebhooksSettings).webhooks_retry_schedule == [0.5, 1.0, 2.0]
    assert load_settings(NotifySettings).smtp_retry_delays == [0.1, 0.2]


def test_the_lease_must_outlast_an_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_WEBHOOKS_TIMEOUT", "30")
    monkeypatch.setenv("PARLEY_WEBHOOKS_LEASE_SECONDS", "20")
    with pytest.raises(SettingsError, match="LEASE"):
        load_settings(WebhooksSettings)
