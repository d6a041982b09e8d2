"""Contacts' current state from ContactUpdated, for the checks at the moment of work.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "contacts",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("contact_id", sa.Uuid(), nullable=False),
        sa.Column("phone", sa.Text(), nullable=True),
        sa.Column("timezone", sa.Text(), nullable=True),
        sa.Column("opted_out_sms", sa.Boolean(), nullable=False),
        sa.Column("opted_out_call", sa.Boolean(), nullable=False),
        sa.Column("dnd_sms", sa.Boolean(), nullable=False),
        sa.Column("dnd_call", sa.Boolean(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "contact_id", name="pk_contacts"),
    )


def downgrade() -> None:
    op.drop_table("contacts")
