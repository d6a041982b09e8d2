"""Users from UserUpdated, tenant queue settings, due time ordering and filters.

* ``manual_actions`` gains ``due_at`` and ``message_template`` (ActionQueued v2) and the stored
  column ``effective_due_at`` = COALESCE(due_at, queued_at) that Let's Start orders by (an
  action without a due time is due when it was queued); the queue index now serves
  (priority desc, effective_due_at, queued_at, id) per assignee and status, and two listing
  indexes serve the due-time and priority sorts.
* ``contacts`` gains name, email and custom fields (ContactUpdated v2), for re-rendering SMS texts.
* ``users``: the team directory from UserUpdated (compacted topic ``manual-actions.users``).
* ``tenant_settings``: call outcomes, quiet hours and the out-of-office policy per tenant.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("manual_actions", sa.Column("due_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("manual_actions", sa.Column("message_template", sa.Text(), nullable=True))
    op.add_column("manual_actions", sa.Column(
        "effective_due_at", sa.DateTime(timezone=True),
        sa.Computed("COALESCE(due_at, queued_at)", persisted=True), nullable=False))
    op.drop_index("ix_manual_actions_queue", "manual_actions")
    op.create_index(
        "ix_manual_actions_queue", "manual_actions",
        ["tenant_id", "assignee_user_id", "status", sa.text("priority DESC"), "effective_due_at",
         "queued_at", "id"])
    op.create_index("ix_manual_actions_by_due", "manual_actions", ["tenant_id", "effective_due_at", "id"])
    op.create_index("ix_manual_actions_by_priority", "manual_actions",
                    ["tenant_id", "priority", "effective_due_at", "queued_at", "id"])

    op.add_column("contacts", sa.Column("name", sa.Text(), nullable=True))
    op.add_column("contacts", sa.Column("email", sa.Text(), nullable=True))
    op.add_column("contacts", sa.Column("custom_fields", postgresql.JSONB(), nullable=False,
                                        server_default="{}"))

    op.create_table(
        "users",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("team_id", sa.Uuid(), nullable=True),
        sa.Column("phone", sa.Text(), nullable=True),
        sa.Column("timezone", sa.Text(), nullable=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("availability", sa.String(16), nullable=False),
        sa.Column("unavailable_from", sa.DateTime(timezone=True), nullable=True),
        sa.Column("unavailable_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "user_id", name="pk_users"),
    )
    op.create_index("ix_users_team", "users", ["tenant_id", "team_id"])

    op.create_table(
        "tenant_settings",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("outcomes", postgresql.JSONB(), nullable=False),
        sa.Column("quiet_start", sa.Time(), nullable=False),
        sa.Column("quiet_end", sa.Time(), nullable=False),
        sa.Column("out_of_office", sa.String(16), nullable=False),
        sa.Column("away_counts_as_out", sa.Boolean(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_by", sa.Uuid(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_tenant_settings"),
    )


def downgrade() -> None:
    op.drop_table("tenant_settings")
    op.drop_index("ix_users_team", "users")
    op.drop_table("users")
    for column in ("custom_fields", "email", "name"):
        op.drop_column("contacts", column)
    op.drop_index("ix_manual_actions_by_priority", "manual_actions")
    op.drop_index("ix_manual_actions_by_due", "manual_actions")
    op.drop_index("ix_manual_actions_queue", "manual_actions")
    op.create_index("ix_manual_actions_queue", "manual_actions",
                    ["tenant_id", "assignee_user_id", "status", sa.text("priority DESC"), "queued_at", "id"])
    for column in ("effective_due_at", "message_template", "due_at"):
        op.drop_column("manual_actions", column)
