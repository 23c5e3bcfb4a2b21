"""a reply keeps the document excerpts it was given

Revision ID: 0004
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    # On the partitioned parent: PostgreSQL adds the column to every partition (no rewrite, it is nullable).
    op.add_column("messages", sa.Column("sources", JSONB(), nullable=True), schema="chat")


def downgrade() -> None:
    op.drop_column("messages", "sources", schema="chat")
