"""Entry points: ``parley-gateway-api`` and ``parley-gateway-migrate``."""

from __future__ import annotations

from parley_common.api import serve as serve_http
from parley_common.db.migrations import upgrade

from parley_gateway.config import get_settings
from parley_gateway.models import SCHEMA


def serve() -> None:
    serve_http("parley_gateway.app:create_app", "gateway", get_settings())


def migrate() -> None:
    upgrade("parley_gateway", get_settings().database_url.get_secret_value(), SCHEMA)
