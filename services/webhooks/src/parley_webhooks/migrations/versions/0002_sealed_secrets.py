"""endpoint secrets hold their Fernet token (longer than the secret itself)

The secrets already stored are encrypted by ``parley-webhooks-migrate`` right after this revision
(``parley_webhooks.secret_box.reseal_stored_secrets``): the key is a setting, not part of the schema.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"

S = "webhooks"


def upgrade() -> None:
    op.alter_column("endpoint_secrets", "secret", type_=sa.Text(), existing_nullable=False, schema=S)


def downgrade() -> None:
    # Tokens do not fit the old column: a downgrade needs the secrets decrypted first.
    op.alter_column("endpoint_secrets", "secret", type_=sa.String(200), existing_nullable=False, schema=S)
