"""Snoozed, scheduled, skipped, expired and failed actions; indexes of the maintenance loop.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD_STATUSES = ("status IN ('queued', 'reserved', 'sending', 'calling', 'awaiting_outcome', 'completed', "
                 "'deleted')")
_NEW_STATUSES = ("status IN ('queued', 'reserved', 'snoozed', 'scheduled', 'sending', 'calling', "
                 "'awaiting_outcome', 'completed', 'skipped', 'expired', 'failed', 'deleted')")


def upgrade() -> None:
    op.add_column("manual_actions", sa.Column("snoozed_until", sa.DateTime(timezone=True), nullable=True))
    op.add_column("manual_actions", sa.Column("send_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("manual_actions", sa.Column("scheduled_by", sa.Uuid(), nullable=True))
    op.add_column("manual_actions", sa.Column("status_reason", sa.Text(), nullable=True))
    op.drop_constraint("ck_manual_actions_status", "manual_actions", type_="check")
    op.create_check_constraint("ck_manual_actions_status", "manual_actions", _NEW_STATUSES)
    op.create_index("ix_manual_actions_lease_due", "manual_actions", ["lease_expires_at"],
                    postgresql_where=sa.text("status = 'reserved'"))
    op.create_index("ix_manual_actions_snooze_due", "manual_actions", ["snoozed_until"],
                    postgresql_where=sa.text("status = 'snoozed'"))
    op.create_index("ix_manual_actions_send_due", "manual_actions", ["send_at"],
                    postgresql_where=sa.text("status = 'scheduled'"))


def downgrade() -> None:
    op.drop_index("ix_manual_actions_send_due", "manual_actions")
    op.drop_index("ix_manual_actions_snooze_due", "manual_actions")
    op.drop_index("ix_manual_actions_lease_due", "manual_actions")
    op.drop_constraint("ck_manual_actions_status", "manual_actions", type_="check")
    op.create_check_constraint("ck_manual_actions_status", "manual_actions", _OLD_STATUSES)
    for column in ("status_reason", "scheduled_by", "send_at", "snoozed_until"):
        op.drop_column("manual_actions", column)
