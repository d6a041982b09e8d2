"""Users, contacts, workflows with versions, enrollments with history, manual actions, outbox, inbox.

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

TENANT = sa.String(64)


def upgrade() -> None:
    create_outbox_tables()
    op.create_table(
        "users",
        sa.Column("tenant_id", TENANT, nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("phone", sa.Text(), nullable=False, comment="E.164"),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_users"),
        sa.CheckConstraint("role IN ('admin', 'manager', 'agent')", name="ck_users_role"),
    )
    op.create_table(
        "contacts",
        sa.Column("tenant_id", TENANT, nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("first_name", sa.Text(), nullable=False),
        sa.Column("last_name", sa.Text(), nullable=False),
        sa.Column(
            "phone", sa.Text(), nullable=True, comment="E.164, or NULL when the contact has no valid number"
        ),
        sa.Column("email", sa.Text(), nullable=True),
        sa.Column("timezone", sa.Text(), nullable=True, comment="IANA name"),
        sa.Column("custom_fields", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("owner_user_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_contacts"),
        sa.ForeignKeyConstraint(
            ["tenant_id", "owner_user_id"], ["users.tenant_id", "users.id"], name="fk_contacts_owner"
        ),
    )
    op.create_index("ix_contacts_owner", "contacts", ["tenant_id", "owner_user_id"])
    op.create_table(
        "workflows",
        sa.Column("tenant_id", TENANT, nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_workflows"),
    )
    op.create_table(
        "workflow_versions",
        sa.Column("tenant_id", TENANT, nullable=False),
        sa.Column("workflow_id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("steps", postgresql.JSONB(), nullable=False, comment="Step specs as authored"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "workflow_id", "version", name="pk_workflow_versions"),
        sa.ForeignKeyConstraint(
            ["tenant_id", "workflow_id"],
            ["workflows.tenant_id", "workflows.id"],
            name="fk_workflow_versions_workflow",
        ),
        sa.CheckConstraint("status IN ('draft', 'published')", name="ck_workflow_versions_status"),
        sa.CheckConstraint("version >= 1", name="ck_workflow_versions_version"),
    )
    op.create_table(
        "round_robin_positions",
        sa.Column("tenant_id", TENANT, nullable=False),
        sa.Column("workflow_id", sa.Uuid(), nullable=False),
        sa.Column("step_id", sa.Text(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("tenant_id", "workflow_id", "step_id", name="pk_round_robin_positions"),
    )
    op.create_table(
        "enrollments",
        sa.Column("tenant_id", TENANT, nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("contact_id", sa.Uuid(), nullable=False),
        sa.Column("workflow_id", sa.Uuid(), nullable=False),
        sa.Column("workflow_version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("current_step_id", sa.Text(), nullable=True),
        sa.Column("waiting_action_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_enrollments"),
        sa.ForeignKeyConstraint(
            ["tenant_id", "contact_id"], ["contacts.tenant_id", "contacts.id"], name="fk_enrollments_contact"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "workflow_id", "workflow_version"],
            ["workflow_versions.tenant_id", "workflow_versions.workflow_id", "workflow_versions.version"],
            name="fk_enrollments_version",
        ),
        sa.CheckConstraint(
            "status IN ('active', 'waiting', 'completed', 'stopped')", name="ck_enrollments_status"
        ),
    )
    op.create_index(
        "ux_enrollments_running",
        "enrollments",
        ["tenant_id", "workflow_id", "contact_id"],
        unique=True,
        postgresql_where=sa.text("status IN ('active', 'waiting')"),
    )
    op.create_index("ix_enrollments_contact", "enrollments", ["tenant_id", "contact_id"])
    op.create_table(
        "enrollment_history",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True, comment="Order of entries"),
        sa.Column("tenant_id", TENANT, nullable=False),
        sa.Column("enrollment_id", sa.Uuid(), nullable=False),
        sa.Column("step_id", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("detail", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.ForeignKeyConstraint(
            ["tenant_id", "enrollment_id"],
            ["enrollments.tenant_id", "enrollments.id"],
            name="fk_enrollment_history_enrollment",
        ),
    )
    op.create_index(
        "ix_enrollment_history_enrollment", "enrollment_history", ["tenant_id", "enrollment_id", "id"]
    )
    op.create_table(
        "manual_actions",
        sa.Column("tenant_id", TENANT, nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("enrollment_id", sa.Uuid(), nullable=False),
        sa.Column("workflow_id", sa.Uuid(), nullable=False),
        sa.Column("workflow_version", sa.Integer(), nullable=False),
        sa.Column("workflow_name", sa.Text(), nullable=False),
        sa.Column("step_id", sa.Text(), nullable=False),
        sa.Column("action_type", sa.String(8), nullable=False),
        sa.Column("action_name", sa.Text(), nullable=False),
        sa.Column("contact_id", sa.Uuid(), nullable=False),
        sa.Column("contact_name", sa.Text(), nullable=False),
        sa.Column("contact_phone", sa.Text(), nullable=True),
        sa.Column("assignee_user_id", sa.Uuid(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_manual_actions"),
        sa.ForeignKeyConstraint(
            ["tenant_id", "enrollment_id"],
            ["enrollments.tenant_id", "enrollments.id"],
            name="fk_manual_actions_enrollment",
        ),
        sa.CheckConstraint("action_type IN ('sms', 'call')", name="ck_manual_actions_type"),
        sa.CheckConstraint("status IN ('queued', 'completed', 'deleted')", name="ck_manual_actions_status"),
    )
    op.create_index("ix_manual_actions_enrollment", "manual_actions", ["tenant_id", "enrollment_id"])


def downgrade() -> None:
    op.drop_table("manual_actions")
    op.drop_table("enrollment_history")
    op.drop_table("enrollments")
    op.drop_table("round_robin_positions")
    op.drop_table("workflow_versions")
    op.drop_table("workflows")
    op.drop_table("contacts")
    op.drop_table("users")
    drop_outbox_tables()
