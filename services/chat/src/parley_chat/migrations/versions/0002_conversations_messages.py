"""conversations, messages hash-partitioned by user, and more detail on completions

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"

PARTITIONS = 16  # frozen here: changing the partition count is a migration of its own


def upgrade() -> None:
    op.add_column("completions", sa.Column("cached", sa.Boolean(), server_default=sa.text("false"), nullable=False), schema="chat")
    op.add_column("completions", sa.Column("estimated", sa.Boolean(), server_default=sa.text("false"), nullable=False), schema="chat")
    op.add_column("completions", sa.Column("conversation_id", sa.Uuid(), nullable=True), schema="chat")

    op.create_table(
        "conversations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("system_prompt", sa.Text(), nullable=True),
        sa.Column("last_message_seq", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("message_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_conversations"),
        sa.UniqueConstraint("user_id", "id", name="uq_conversations_user_id_id"),
        schema="chat",
    )
    op.create_index(
        "ix_conversations_user_created", "conversations", ["user_id", "created_at", "id"], schema="chat"
    )

    # One sequence orders messages across partitions (the cursor of message pagination).
    op.execute("CREATE SEQUENCE chat.message_seq AS bigint")
    # Declarative hash partitioning: every query names user_id (owner scoping), so it touches one partition.
    op.execute(
        """
        CREATE TABLE chat.messages (
            user_id uuid NOT NULL,
            id uuid NOT NULL,
            conversation_id uuid NOT NULL,
            seq bigint NOT NULL DEFAULT nextval('chat.message_seq'),
            role varchar(20) NOT NULL,
            content text NOT NULL,
            model varchar(200),
            status varchar(20) NOT NULL DEFAULT 'completed',
            finish_reason varchar(40),
            prompt_tokens integer,
            completion_tokens integer,
            request_id varchar(128),
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT pk_messages PRIMARY KEY (user_id, id),
            CONSTRAINT fk_messages_conversation FOREIGN KEY (user_id, conversation_id)
                REFERENCES chat.conversations (user_id, id) ON DELETE CASCADE
        ) PARTITION BY HASH (user_id)
        """
    )
    op.execute("ALTER SEQUENCE chat.message_seq OWNED BY chat.messages.seq")
    for remainder in range(PARTITIONS):
        op.execute(
            f"CREATE TABLE chat.messages_p{remainder:02d} PARTITION OF chat.messages "
            f"FOR VALUES WITH (MODULUS {PARTITIONS}, REMAINDER {remainder})"
        )
    op.create_index(
        "ix_messages_conversation_seq", "messages", ["user_id", "conversation_id", "seq"], schema="chat"
    )


def downgrade() -> None:
    op.drop_table("messages", schema="chat")
    op.drop_table("conversations", schema="chat")
    op.drop_column("completions", "conversation_id", schema="chat")
    op.drop_column("completions", "estimated", schema="chat")
    op.drop_column("completions", "cached", schema="chat")
