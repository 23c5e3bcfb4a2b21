"""partitioned ledger, rollups, period totals, thresholds, provider usage, outbox

The ledger becomes a table partitioned by range on ``occurred_at`` with a default partition; range
partitions are created by parley-usage-beat (partition maintenance moves rows out of the default
partition when their partition appears). Rows of the first ledger are copied over and rolled up.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op
from parley_common.messaging.outbox import create_outbox_table_v1
from sqlalchemy.dialects.postgresql import UUID

revision = "0002"
down_revision = "0001"

S = "usage"


def upgrade() -> None:
    op.execute(f"ALTER TABLE {S}.ledger RENAME TO ledger_v1")
    op.execute(f"ALTER INDEX {S}.pk_ledger RENAME TO pk_ledger_v1")
    op.execute(f"ALTER TABLE {S}.ledger_v1 RENAME CONSTRAINT uq_ledger_event_id TO uq_ledger_v1_event_id")
    op.execute(f"ALTER INDEX {S}.ix_ledger_user_id RENAME TO ix_ledger_v1_user_id")

    op.execute(
        f"""
        CREATE TABLE {S}.ledger (
            event_id uuid NOT NULL,
            occurred_at timestamptz NOT NULL,
            user_id uuid NOT NULL,
            request_id varchar(128) NOT NULL,
            model varchar(200) NOT NULL,
            provider varchar(100) NOT NULL,
            status varchar(20) NOT NULL,
            prompt_tokens integer NOT NULL,
            completion_tokens integer NOT NULL,
            cached boolean NOT NULL,
            estimated boolean NOT NULL,
            plan varchar(50),
            api_key_id uuid,
            conversation_id uuid,
            recorded_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT pk_ledger PRIMARY KEY (event_id, occurred_at)
        ) PARTITION BY RANGE (occurred_at)
        """
    )
    op.execute(f"CREATE INDEX ix_ledger_user_id_occurred_at ON {S}.ledger (user_id, occurred_at)")
    op.execute(f"CREATE TABLE {S}.ledger_default PARTITION OF {S}.ledger DEFAULT")

    op.create_table(
        "daily_rollups",
        sa.Column("user_id", UUID(as_uuid=True), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("provider", sa.String(100), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("cached_requests", sa.BigInteger(), nullable=False),
        sa.Column("estimated_requests", sa.BigInteger(), nullable=False),
        sa.Column("cached_tokens", sa.BigInteger(), nullable=False),
        sa.Column("estimated_tokens", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "day", "model", "provider", name="pk_daily_rollups"),
        schema=S,
    )
    op.create_index("ix_daily_rollups_day", "daily_rollups", ["day"], schema=S)

    op.create_table(
        "period_totals",
        sa.Column("user_id", UUID(as_uuid=True), nullable=False),
        sa.Column("period", sa.String(5), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "period", "period_start", name="pk_period_totals"),
        schema=S,
    )
    op.create_index(
        "ix_period_totals_period_period_start", "period_totals", ["period", "period_start"], schema=S
    )

    op.create_table(
        "quota_thresholds",
        sa.Column("user_id", UUID(as_uuid=True), nullable=False),
        sa.Column("period", sa.String(5), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("threshold_percent", sa.SmallInteger(), nullable=False),
        sa.Column("quota_tokens", sa.BigInteger(), nullable=False),
        sa.Column("used_tokens", sa.BigInteger(), nullable=False),
        sa.Column("event_id", UUID(as_uuid=True), nullable=False),
        sa.Column("crossed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint(
            "user_id", "period", "period_start", "threshold_percent", name="pk_quota_thresholds"
        ),
        schema=S,
    )

    op.create_table(
        "provider_usage",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("provider", sa.String(100), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("requests", sa.BigInteger()),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("imported_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("day", "provider", "model", name="pk_provider_usage"),
        schema=S,
    )

    create_outbox_table_v1(S)

    # Carry the first ledger over (into the default partition; maintenance moves it) and roll it up.
    op.execute(
        f"""
        INSERT INTO {S}.ledger (event_id, occurred_at, user_id, request_id, model, provider, status,
                                prompt_tokens, completion_tokens, cached, estimated, recorded_at)
        SELECT event_id, occurred_at, user_id, request_id, model, provider, status,
               prompt_tokens, completion_tokens, cached, estimated, recorded_at
        FROM {S}.ledger_v1
        ON CONFLICT DO NOTHING
        """
    )
    op.execute(
        f"""
        INSERT INTO {S}.daily_rollups (user_id, day, model, provider, prompt_tokens, completion_tokens,
            requests, cached_requests, estimated_requests, cached_tokens, estimated_tokens)
        SELECT user_id, (occurred_at AT TIME ZONE 'UTC')::date, model, provider,
               sum(prompt_tokens), sum(completion_tokens), count(*),
               count(*) FILTER (WHERE cached), count(*) FILTER (WHERE estimated),
               coalesce(sum(prompt_tokens + completion_tokens) FILTER (WHERE cached), 0),
               coalesce(sum(prompt_tokens + completion_tokens) FILTER (WHERE estimated), 0)
        FROM {S}.ledger GROUP BY 1, 2, 3, 4
        """
    )
    op.execute(
        f"""
        INSERT INTO {S}.period_totals (user_id, period, period_start, tokens)
        SELECT user_id, 'day', day, sum(prompt_tokens + completion_tokens) FROM {S}.daily_rollups GROUP BY 1, 3
        UNION ALL
        SELECT user_id, 'month', date_trunc('month', day)::date, sum(prompt_tokens + completion_tokens)
        FROM {S}.daily_rollups GROUP BY 1, 3
        """
    )
    op.execute(f"DROP TABLE {S}.ledger_v1")


def downgrade() -> None:
    op.drop_table("outbox", schema=S)
    op.drop_table("provider_usage", schema=S)
    op.drop_table("quota_thresholds", schema=S)
    op.drop_table("period_totals", schema=S)
    op.drop_table("daily_rollups", schema=S)
    op.execute(f"ALTER TABLE {S}.ledger RENAME TO ledger_v2")
    op.execute(f"ALTER INDEX {S}.pk_ledger RENAME TO pk_ledger_v2")
    op.create_table(
        "ledger",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("provider", sa.String(100), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cached", sa.Boolean(), nullable=False),
        sa.Column("estimated", sa.Boolean(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ledger"),
        sa.UniqueConstraint("event_id", name="uq_ledger_event_id"),
        schema=S,
    )
    op.create_index("ix_ledger_user_id", "ledger", ["user_id"], schema=S)
    op.execute(
        f"""
        INSERT INTO {S}.ledger (event_id, user_id, request_id, model, provider, status, prompt_tokens,
                                completion_tokens, cached, estimated, occurred_at, recorded_at)
        SELECT event_id, user_id, request_id, model, provider, status, prompt_tokens, completion_tokens,
               cached, estimated, occurred_at, recorded_at
        FROM {S}.ledger_v2 ON CONFLICT DO NOTHING
        """
    )
    op.execute(f"DROP TABLE {S}.ledger_v2")
