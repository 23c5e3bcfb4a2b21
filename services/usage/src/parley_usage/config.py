"""Usage settings (``PARLEY_*`` environment variables)."""

from __future__ import annotations

from functools import lru_cache

from parley_common.messaging.worker import WorkerSettings
from parley_common.settings import DatabaseSettings, load_settings


class Settings(WorkerSettings, DatabaseSettings):
    pass


@lru_cache
def get_settings() -> Settings:
    return load_settings(Settings)
