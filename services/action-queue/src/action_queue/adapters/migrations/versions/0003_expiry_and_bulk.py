"""Expiry time of an action (from ActionQueued) and the index the maintenance loop finds it by;
bulk requests.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("manual_actions", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_manual_actions_expiry_due", "manual_actions", ["expires_at"],
                    postgresql_where=sa.text("status IN ('queued', 'reserved', 'snoozed', 'scheduled') "
                                             "AND expires_at IS NOT NULL"))
    op.create_table(
        "bulk_requests",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(100), nullable=False),
        sa.Column("operation", sa.String(16), nullable=False),
        sa.Column("filters", postgresql.JSONB(), nullable=False),
        sa.Column("assignee_user_id", sa.Uuid(), nullable=True),
        sa.Column("until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("requested_by", sa.Uuid(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("matched", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("changed", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("unchanged", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "request_id", name="pk_bulk_requests"),
    )
    op.create_index("ix_bulk_requests_running", "bulk_requests", ["created_at"],
                    postgresql_where=sa.text("status = 'running'"))


def downgrade() -> None:
    op.drop_table("bulk_requests")
    op.drop_index("ix_manual_actions_expiry_due", "manual_actions")
    op.drop_column("manual_actions", "expires_at")
