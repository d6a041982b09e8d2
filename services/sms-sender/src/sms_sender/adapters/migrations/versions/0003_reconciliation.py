"""outgoing_sms.reconcile_at and reconcile_lookups: unknown outcomes are looked up at Twilio first.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("outgoing_sms", sa.Column("reconcile_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "outgoing_sms", sa.Column("reconcile_lookups", sa.Integer(), nullable=False, server_default="0")
    )
    op.create_index(
        "ix_outgoing_sms_reconcile_due",
        "outgoing_sms",
        ["reconcile_at"],
        postgresql_where=sa.text("reconcile_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_outgoing_sms_reconcile_due", "outgoing_sms")
    op.drop_column("outgoing_sms", "reconcile_lookups")
    op.drop_column("outgoing_sms", "reconcile_at")
