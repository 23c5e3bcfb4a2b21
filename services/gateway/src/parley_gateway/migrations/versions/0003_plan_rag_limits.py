"""plans gain retrieval (RAG) limits: documents a user may keep, largest document accepted

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"

S = "gateway"

COLUMNS = ("rag_max_documents", "rag_max_document_bytes")

# The limits of the default plans (see 0002's DEFAULT_PLANS); any other plan gets the columns' defaults,
# the free plan's. rag_max_documents: 0 means retrieval is not in the plan, None means unlimited.
DEFAULT_PLAN_LIMITS = {
    "free": {"rag_max_documents": 10, "rag_max_document_bytes": 100_000},
    "pro": {"rag_max_documents": 100, "rag_max_document_bytes": 500_000},
    "enterprise": {"rag_max_documents": 1_000, "rag_max_document_bytes": 1_000_000},
}


def upgrade() -> None:
    op.add_column("plans", sa.Column("rag_max_documents", sa.Integer(), server_default="10"), schema=S)
    op.add_column(
        "plans",
        sa.Column("rag_max_document_bytes", sa.Integer(), nullable=False, server_default="100000"),
        schema=S,
    )
    plans = sa.table(
        "plans",
        sa.column("name", sa.String()),
        *(sa.column(column, sa.Integer()) for column in COLUMNS),
        schema=S,
    )
    for name, limits in DEFAULT_PLAN_LIMITS.items():
        op.execute(plans.update().where(plans.c.name == name).values(**limits))


def downgrade() -> None:
    # Per-user overrides of the two limits would outlive their columns: drop them too.
    op.execute(
        f"UPDATE {S}.users SET plan_overrides = plan_overrides - 'rag_max_documents' - 'rag_max_document_bytes'"
        " WHERE plan_overrides ?| array['rag_max_documents', 'rag_max_document_bytes']"
    )
    for column in reversed(COLUMNS):
        op.drop_column("plans", column, schema=S)
