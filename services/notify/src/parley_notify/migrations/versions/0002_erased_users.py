"""erased users: the accounts deleted (user.deleted.v1), so no later event writes to them again

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "erased_users",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("confirmation", sa.String(20), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name="pk_erased_users"),
        schema="notify",
    )


def downgrade() -> None:
    op.drop_table("erased_users", schema="notify")
