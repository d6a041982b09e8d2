"""Manual actions, outbox and inbox.

Revision ID: 0001
Revises:
Create Date: 2025-01-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from manual_actions.outbox import create_outbox_tables, drop_outbox_tables

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_outbox_tables()
    op.create_table(
        "manual_actions",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("action_type", sa.String(8), nullable=False),
        sa.Column("action_name", sa.Text(), nullable=False),
        sa.Column("workflow_id", sa.Uuid(), nullable=False),
        sa.Column("workflow_name", sa.Text(), nullable=False),
        sa.Column("workflow_version", sa.Integer(), nullable=False),
        sa.Column("step_id", sa.Text(), nullable=False),
        sa.Column("enrollment_id", sa.Uuid(), nullable=False),
        sa.Column("contact_id", sa.Uuid(), nullable=False),
        sa.Column("contact_name", sa.Text(), nullable=False),
        sa.Column("contact_phone", sa.Text(), nullable=True),
        sa.Column("assignee_user_id", sa.Uuid(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("priority", sa.SmallInteger(), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("reserved_by", sa.Uuid(), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("call_status", sa.Text(), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.Column("pending_command_id", sa.Uuid(), nullable=True),
        sa.Column("command_sequence", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("history", postgresql.JSONB(), nullable=False, server_default="[]"),
        sa.CheckConstraint("action_type IN ('sms', 'call')", name="ck_manual_actions_type"),
        sa.CheckConstraint(
            "status IN ('queued', 'reserved', 'sending', 'calling', 'awaiting_outcome', 'completed', "
            "'deleted')",
            name="ck_manual_actions_status",
        ),
    )
    op.create_index(
        "ix_manual_actions_queue",
        "manual_actions",
        ["tenant_id", "assignee_user_id", "status", sa.text("priority DESC"), "queued_at", "id"],
    )
    op.create_index("ix_manual_actions_listing", "manual_actions", ["tenant_id", "queued_at", "id"])
    op.create_index("ix_manual_actions_workflow", "manual_actions", ["tenant_id", "workflow_id"])


def downgrade() -> None:
    op.drop_table("manual_actions")
    drop_outbox_tables()
