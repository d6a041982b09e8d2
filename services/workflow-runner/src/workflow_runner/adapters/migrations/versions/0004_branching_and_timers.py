"""Step graph (branches, waits, timeouts, goals) and durable timers (decision 0013).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TENANT = sa.String(64)
OLD_STATUSES = "status IN ('queued', 'completed', 'deleted')"
NEW_STATUSES = "status IN ('queued', 'completed', 'deleted', 'skipped', 'expired', 'failed')"


def upgrade() -> None:
    op.add_column(
        "workflow_versions",
        sa.Column(
            "goals",
            postgresql.JSONB(),
            nullable=False,
            server_default=sa.text("'[]'::jsonb"),
            comment="Goals that stop an enrollment (replied, opted_out, do_not_disturb)",
        ),
    )
    op.add_column(
        "enrollments",
        sa.Column(
            "timer_id", sa.Uuid(), nullable=True, comment="The timer that may wake it; any other is stale"
        ),
    )
    op.add_column(
        "enrollments",
        sa.Column(
            "last_outcome", sa.Text(), nullable=True, comment="Outcome key of its latest manual action"
        ),
    )
    op.drop_constraint("ck_manual_actions_status", "manual_actions", type_="check")
    op.create_check_constraint("ck_manual_actions_status", "manual_actions", NEW_STATUSES)
    op.create_table(
        "timers",
        sa.Column("tenant_id", TENANT, nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("enrollment_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("step_id", sa.Text(), nullable=False),
        sa.Column("action_id", sa.Uuid(), nullable=True, comment="Timeouts: the action the step queued"),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("fired_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_timers"),
        sa.ForeignKeyConstraint(
            ["tenant_id", "enrollment_id"],
            ["enrollments.tenant_id", "enrollments.id"],
            name="fk_timers_enrollment",
        ),
        sa.CheckConstraint("kind IN ('wait', 'timeout')", name="ck_timers_kind"),
    )
    op.create_index("ix_timers_due", "timers", ["due_at"], postgresql_where=sa.text("fired_at IS NULL"))
    op.create_index("ix_timers_enrollment", "timers", ["tenant_id", "enrollment_id"])


def downgrade() -> None:
    op.drop_index("ix_timers_enrollment", table_name="timers")
    op.drop_index("ix_timers_due", table_name="timers")
    op.drop_table("timers")
    op.drop_constraint("ck_manual_actions_status", "manual_actions", type_="check")
    op.create_check_constraint("ck_manual_actions_status", "manual_actions", OLD_STATUSES)
    op.drop_column("enrollments", "last_outcome")
    op.drop_column("enrollments", "timer_id")
    op.drop_column("workflow_versions", "goals")
