"""completions and outbox

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

from parley_common.messaging.outbox import create_outbox_table_v1

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "completions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("provider", sa.String(100), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_completions"),
        schema="chat",
    )
    op.create_index("ix_completions_user_id", "completions", ["user_id"], schema="chat")
    create_outbox_table_v1("chat")

def downgrade() -> None:
    op.drop_table("outbox", schema="chat")
    op.drop_table("completions", schema="chat")
