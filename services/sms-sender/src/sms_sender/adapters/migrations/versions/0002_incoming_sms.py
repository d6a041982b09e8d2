"""incoming_sms and inbound_sequences: SMS contacts sent us (Twilio's incoming-message webhook).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Columns written out here (not imported from tables.py): a migration is frozen once released.
    op.create_table(
        "incoming_sms",
        sa.Column("message_sid", sa.Text(), primary_key=True),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("account_sid", sa.Text(), nullable=True),
        sa.Column("from_phone", sa.Text(), nullable=False),
        sa.Column("to_phone", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("keyword", sa.Text(), nullable=True),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint(
            "keyword IS NULL OR keyword IN ('opt_out', 'opt_in', 'help')", name="ck_incoming_sms_keyword"
        ),
    )
    op.create_index("ix_incoming_sms_tenant_from", "incoming_sms", ["tenant_id", "from_phone", "received_at"])
    op.create_table(
        "inbound_sequences",
        sa.Column("subject", sa.Text(), primary_key=True),
        sa.Column("last_sequence", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("inbound_sequences")
    op.drop_index("ix_incoming_sms_tenant_from", "incoming_sms")
    op.drop_table("incoming_sms")
