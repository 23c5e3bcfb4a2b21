"""plans, refresh tokens, API keys, outbox, applied events; users gain plan overrides and OIDC links

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op
from parley_common.messaging.outbox import create_outbox_table_v1
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"

S = "gateway"

# The default plans as first shipped; admins change them through /v1/admin/plans afterwards.
DEFAULT_PLANS = [
    {
        "name": "free",
        "description": "Free tier: the cheaper model, modest limits.",
        "allowed_models": ["gpt-4o-mini", "gpt-4o", "parley-offline"],
        "default_model": "gpt-4o-mini",
        "model_routes": {"gpt-4o": "gpt-4o-mini"},
        "requests_per_minute": 60,
        "tokens_per_minute": 100_000,
        "concurrent_streams": 3,
        "daily_token_quota": 200_000,
        "monthly_token_quota": 2_000_000,
        "max_output_tokens": 1024,
        "cache": "exact",
    },
    {
        "name": "pro",
        "description": "Every model, higher limits.",
        "allowed_models": [],
        "default_model": "gpt-4o",
        "model_routes": {},
        "requests_per_minute": 600,
        "tokens_per_minute": 1_000_000,
        "concurrent_streams": 20,
        "daily_token_quota": 5_000_000,
        "monthly_token_quota": 100_000_000,
        "max_output_tokens": 4096,
        "cache": "semantic",
    },
    {
        "name": "enterprise",
        "description": "Every model, no token quota, limits sized for production traffic.",
        "allowed_models": [],
        "default_model": "gpt-4o",
        "model_routes": {},
        "requests_per_minute": 6000,
        "tokens_per_minute": 10_000_000,
        "concurrent_streams": 200,
        "daily_token_quota": None,
        "monthly_token_quota": None,
        "max_output_tokens": 16384,
        "cache": "semantic",
    },
]


def upgrade() -> None:
    plans = op.create_table(
        "plans",
        sa.Column("name", sa.String(50), nullable=False),
        sa.Column("description", sa.String(500), nullable=False, server_default=""),
        sa.Column("allowed_models", JSONB(), nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("default_model", sa.String(200)),
        sa.Column("model_routes", JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("requests_per_minute", sa.Integer()),
        sa.Column("tokens_per_minute", sa.Integer()),
        sa.Column("concurrent_streams", sa.Integer()),
        sa.Column("daily_token_quota", sa.BigInteger()),
        sa.Column("monthly_token_quota", sa.BigInteger()),
        sa.Column("max_output_tokens", sa.Integer(), nullable=False, server_default="4096"),
        sa.Column("cache", sa.String(20), nullable=False, server_default="off"),
        sa.Column("revision", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("modified_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("name", name="pk_plans"),
        sa.CheckConstraint("cache IN ('off', 'exact', 'semantic')", name="ck_plans_cache"),
        schema=S,
    )
    op.bulk_insert(plans, DEFAULT_PLANS)

    op.alter_column("users", "password_hash", nullable=True, schema=S)
    op.add_column(
        "users",
        sa.Column("plan_overrides", JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        schema=S,
    )
    op.add_column("users", sa.Column("plan_changed_at", sa.DateTime(timezone=True)), schema=S)
    op.add_column("users", sa.Column("revision", sa.BigInteger(), nullable=False, server_default="0"), schema=S)
    catalog = op.create_table(
        "plan_catalog",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("id", name="pk_plan_catalog"),
        sa.CheckConstraint("id = 1", name="ck_plan_catalog_single_row"),
        schema=S,
    )
    op.bulk_insert(catalog, [{"id": 1, "revision": 0}])
    op.add_column("users", sa.Column("external_issuer", sa.String(500)), schema=S)
    op.add_column("users", sa.Column("external_subject", sa.String(255)), schema=S)
    op.create_unique_constraint(
        "uq_users_external_issuer_external_subject", "users", ["external_issuer", "external_subject"], schema=S
    )
    op.create_foreign_key(
        "fk_users_plan_plans",
        "users",
        "plans",
        ["plan"],
        ["name"],
        source_schema=S,
        referent_schema=S,
        onupdate="CASCADE",
    )

    op.create_table(
        "refresh_tokens",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("family_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("id", name="pk_refresh_tokens"),
        sa.UniqueConstraint("token_hash", name="uq_refresh_tokens_token_hash"),
        sa.ForeignKeyConstraint(
            ["user_id"], [f"{S}.users.id"], name="fk_refresh_tokens_user_id_users", ondelete="CASCADE"
        ),
        schema=S,
    )
    op.create_index("ix_refresh_tokens_family_id", "refresh_tokens", ["family_id"], schema=S)
    op.create_index("ix_refresh_tokens_user_id", "refresh_tokens", ["user_id"], schema=S)

    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.Column("last_used_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
        sa.ForeignKeyConstraint(
            ["user_id"], [f"{S}.users.id"], name="fk_api_keys_user_id_users", ondelete="CASCADE"
        ),
        schema=S,
    )
    op.create_index("ix_api_keys_user_id", "api_keys", ["user_id"], schema=S)

    op.create_table(
        "applied_events",
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("event_type", sa.String(200), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name="pk_applied_events"),
        schema=S,
    )
    create_outbox_table_v1(S)


def downgrade() -> None:
    op.drop_table("outbox", schema=S)
    op.drop_table("applied_events", schema=S)
    op.drop_table("api_keys", schema=S)
    op.drop_table("refresh_tokens", schema=S)
    op.drop_constraint("fk_users_plan_plans", "users", schema=S, type_="foreignkey")
    op.drop_constraint("uq_users_external_issuer_external_subject", "users", schema=S, type_="unique")
    op.drop_table("plan_catalog", schema=S)
    for column in ("revision", "external_subject", "external_issuer", "plan_changed_at", "plan_overrides"):
        op.drop_column("users", column, schema=S)
    op.alter_column("users", "password_hash", nullable=False, schema=S)
    op.drop_table("plans", schema=S)
