"""Settings: environment variables, secrets, production refusing development defaults."""

from __future__ import annotations

import pytest
from parley_common.settings import (
    DatabaseSettings,
    ParleySettings,
    RabbitSettings,
    SettingsError,
    load_settings,
)


class ServiceSettings(ParleySettings, DatabaseSettings, RabbitSettings):
    pass


class TestLoadSettings:
    def test_reads_prefixed_environment_and_normalises_postgres_urls(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("PARLEY_DATABASE_URL", "postgres://app:pw@db.internal:5432/parley")
        monkeypatch.setenv("PARLEY_REGION", "eu-west")
        settings = load_settings(ServiceSettings)
        assert settings.region == "eu-west"
        assert (
            settings.database_url.get_secret_value() == "postgresql+psycopg://app:pw@db.internal:5432/parley"
        )

    def test_secrets_never_appear_in_repr(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PARLEY_RABBITMQ_URL", "amqp://svc:hunter2@mq:5672/")
        assert "hunter2" not in repr(load_settings(ServiceSettings))

    def test_production_refuses_development_defaults_and_names_them(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("PARLEY_ENV", "prod")
        monkeypatch.setenv("PARLEY_DATABASE_URL", "postgresql://app:s3cret@db/parley")
        with pytest.raises(SettingsError) as excinfo:
            load_settings(ServiceSettings)
        message = str(excinfo.value)
        assert "PARLEY_RABBITMQ_URL" in message
        assert "PARLEY_DATABASE_URL" not in message  # it was set
        assert "s3cret" not in message
        assert "guest" not in message

    def test_production_starts_when_everything_is_set(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PARLEY_ENV", "prod")
        monkeypatch.setenv("PARLEY_DATABASE_URL", "postgresql://app:s3cret@db/parley")
        monkeypatch.setenv("PARLEY_RABBITMQ_URL", "amqps://svc:pw@mq:5671/parley")
        assert load_settings(ServiceSettings).env == "prod"

    def test_invalid_values_are_reported_without_the_value(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PARLEY_DATABASE_POOL_SIZE", "0")
        monkeypatch.setenv("PARLEY_DATABASE_URL", "postgresql://app:topsecret@db/parley")
        with pytest.raises(SettingsError, match="database_pool_size") as excinfo:
            load_settings(ServiceSettings)
        assert "topsecret" not in str(excinfo.value)
