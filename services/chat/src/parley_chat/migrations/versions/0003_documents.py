"""documents and their chunks with embeddings (pgvector), for retrieval

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import Vector

revision = "0003"
down_revision = "0002"

DIMENSION = 384  # frozen here: another embedding model is a migration of its own


def upgrade() -> None:
    # A no-op where the extension exists already (a managed database, where an administrator created it).
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.create_table(
        "documents",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("bytes", sa.Integer(), nullable=False),
        sa.Column("chunk_count", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_documents"),
        sa.UniqueConstraint("user_id", "id", name="uq_documents_user_id_id"),
        schema="chat",
    )
    op.create_index("ix_documents_user_created", "documents", ["user_id", "created_at", "id"], schema="chat")
    # No approximate (HNSW) index: a search is exact over one user's chunks, found through the primary
    # key's leading user_id; an index over everyone's vectors would filter by user after the fact.
    op.create_table(
        "document_chunks",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("document_id", sa.Uuid(), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("embedding", Vector(DIMENSION), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "document_id", "ordinal", name="pk_document_chunks"),
        sa.ForeignKeyConstraint(
            ["user_id", "document_id"],
            ["chat.documents.user_id", "chat.documents.id"],
            ondelete="CASCADE",
            name="fk_document_chunks_document",
        ),
        schema="chat",
    )


def downgrade() -> None:
    op.drop_table("document_chunks", schema="chat")
    op.drop_table("documents", schema="chat")
