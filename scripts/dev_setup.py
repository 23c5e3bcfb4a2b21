"""``make run`` set-up: create the database if missing and migrate every service's schema."""

from __future__ import annotations

import os

from parley_common.db.admin import ensure_database
from parley_common.db.migrations import registered, upgrade
from parley_common.settings import as_psycopg_url


def main() -> None:
    url = as_psycopg_url(
        os.environ.get("PARLEY_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/parley")
    )
    url = url.get_secret_value() if hasattr(url, "get_secret_value") else url
    if ensure_database(url):
        print("[setup] created the database")
    schemas = registered()
    for package, schema in schemas:
        upgrade(package, url, schema)
    print("[setup] schemas migrated: " + ", ".join(schema for _, schema in schemas))


if __name__ == "__main__":
    main()
