"""Migration 0003 gives every plan its retrieval (RAG) limits, the default plans their own figures, and
comes back down without leaving per-user overrides of limits that no longer exist."""

from __future__ import annotations

import json
import uuid
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from parley_common.db.engine import connect_args
from parley_common.db.migrations import alembic_config, upgrade
from parley_gateway.models import Model
from sqlalchemy import create_engine

from tests.support.db import execute, query

RAG = ("rag_max_documents", "rag_max_document_bytes")


def plan_limits(database_url: str) -> dict[str, tuple[Any, Any]]:
    found = query(database_url, "SELECT name, rag_max_documents, rag_max_document_bytes FROM gateway.plans")
    return {r["name"]: (r["rag_max_documents"], r["rag_max_document_bytes"]) for r in found}


def plan_columns(database_url: str) -> set[str]:
    found = query(
        database_url,
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'gateway' "
        "AND table_name = 'plans'",
    )
    return {r["column_name"] for r in found}


def test_upgrade_seeds_the_default_plans_and_gives_other_plans_the_free_figures(empty_database: str) -> None:
    upgrade("parley_gateway", empty_database, "gateway", "0002")
    execute(empty_database, "INSERT INTO gateway.plans (name) VALUES ('team')")
    upgrade("parley_gateway", empty_database, "gateway")

    assert plan_limits(empty_database) == {
        "free": (10, 100_000),
        "pro": (100, 500_000),
        "enterprise": (1_000, 1_000_000),
        "team": (10, 100_000),
    }
    # A plan created by hand later, naming neither column, gets the same server defaults.
    execute(empty_database, "INSERT INTO gateway.plans (name) VALUES ('later')")
    assert plan_limits(empty_database)["later"] == (10, 100_000)


def _plans_table_only(obj: Any, name: str | None, type_: str, _reflected: bool, _compare_to: Any) -> bool:
    table = name if type_ == "table" else getattr(getattr(obj, "table", None), "name", None)
    return table == "plans"


def test_the_migrated_plans_table_matches_the_model(empty_database: str) -> None:
    upgrade("parley_gateway", empty_database, "gateway")
    engine = create_engine(empty_database, connect_args=connect_args("tests"))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn,
                opts={
                    "include_schemas": True,
                    "include_name": lambda name, type_, _parent: type_ != "schema" or name == "gateway",
                    "compare_type": True,
                    "version_table_schema": "gateway",
                    "include_object": _plans_table_only,
                },
            )
            differences = compare_metadata(context, Model.metadata)
    finally:
        engine.dispose()
    assert differences == []


def test_downgrade_drops_the_columns_and_the_overrides_of_them(empty_database: str) -> None:
    upgrade("parley_gateway", empty_database, "gateway")
    user = uuid.uuid4()
    execute(
        empty_database,
        "INSERT INTO gateway.users (id, email, plan, plan_overrides) VALUES (:u, 'a@example.com', 'pro', "
        "CAST(:o AS jsonb))",
        u=user,
        o=json.dumps({"concurrent_streams": 9, "rag_max_documents": None, "rag_max_document_bytes": 5}),
    )
    command.downgrade(alembic_config("parley_gateway", empty_database, "gateway"), "0002")

    assert not set(RAG) & plan_columns(empty_database)
    [row] = query(empty_database, "SELECT plan_overrides FROM gateway.users WHERE id = :u", u=user)
    assert row["plan_overrides"] == {"concurrent_streams": 9}

    upgrade("parley_gateway", empty_database, "gateway")  # and up again
    assert plan_limits(empty_database)["enterprise"] == (1_000, 1_000_000)
