"""Bulk enrollment runs (filter or list, drip batches, resumable).

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

TENANT = sa.String(64)


def upgrade() -> None:
    op.create_table(
        "bulk_enrollments",
        sa.Column("tenant_id", TENANT, nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column(
            "request_id", sa.Text(), nullable=False, comment="Client's idempotency key (unique per tenant)"
        ),
        sa.Column(
            "fingerprint", sa.Text(), nullable=False, comment="Hash of the request; a reused id must match it"
        ),
        sa.Column("workflow_id", sa.Uuid(), nullable=False),
        sa.Column(
            "workflow_version", sa.Integer(), nullable=False, comment="Published version pinned at submit"
        ),
        sa.Column("target", postgresql.JSONB(), nullable=False, comment="{kind: filter|list, filter: {...}}"),
        sa.Column("policy", sa.String(32), nullable=False),
        sa.Column("delivery", sa.String(16), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=True, comment="Drip: contacts per batch"),
        sa.Column("interval_seconds", sa.Integer(), nullable=True, comment="Drip: seconds between batches"),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column(
            "position", sa.Integer(), nullable=False, server_default="0", comment="Last target seq worked"
        ),
        sa.Column(
            "batch_done",
            sa.Integer(),
            nullable=False,
            server_default="0",
            comment="Drip: worked in this batch",
        ),
        sa.Column("enrolled", sa.Integer(), nullable=False, server_default="0"),
        sa.Column(
            "skipped",
            postgresql.JSONB(),
            nullable=False,
            server_default=sa.text("'{}'::jsonb"),
            comment="reason -> count",
        ),
        sa.Column(
            "next_due_at", sa.DateTime(timezone=True), nullable=True, comment="When the next chunk may run"
        ),
        sa.Column("requested_by", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_bulk_enrollments"),
        sa.UniqueConstraint("tenant_id", "request_id", name="uq_bulk_enrollments_request"),
        sa.CheckConstraint(
            "status IN ('running', 'paused', 'cancelled', 'done')", name="ck_bulk_enrollments_status"
        ),
        sa.CheckConstraint(
            "policy IN ('skip_if_enrolled_ever', 'skip_if_active', 'allow_reenrollment')",
            name="ck_bulk_enrollments_policy",
        ),
        sa.CheckConstraint("delivery IN ('all_at_once', 'drip')", name="ck_bulk_enrollments_delivery"),
    )
    op.create_index(
        "ix_bulk_enrollments_due",
        "bulk_enrollments",
        ["next_due_at"],
        postgresql_where=sa.text("status = 'running'"),
    )
    op.create_table(
        "bulk_enrollment_targets",
        sa.Column("tenant_id", TENANT, nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("contact_id", sa.Uuid(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "run_id", "seq", name="pk_bulk_enrollment_targets"),
        sa.UniqueConstraint("tenant_id", "run_id", "contact_id", name="uq_bulk_enrollment_targets_contact"),
        sa.ForeignKeyConstraint(
            ["tenant_id", "run_id"],
            ["bulk_enrollments.tenant_id", "bulk_enrollments.id"],
            name="fk_bulk_enrollment_targets_run",
            ondelete="CASCADE",
        ),
    )
    op.create_table(
        "bulk_enrollment_results",
        sa.Column("tenant_id", TENANT, nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("contact_id", sa.Uuid(), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False, comment="enrolled or skipped_<reason>"),
        sa.Column("enrollment_id", sa.Uuid(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "run_id", "contact_id", name="pk_bulk_enrollment_results"),
        sa.ForeignKeyConstraint(
            ["tenant_id", "run_id"],
            ["bulk_enrollments.tenant_id", "bulk_enrollments.id"],
            name="fk_bulk_enrollment_results_run",
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    op.drop_table("bulk_enrollment_results")
    op.drop_table("bulk_enrollment_targets")
    op.drop_index("ix_bulk_enrollments_due", table_name="bulk_enrollments")
    op.drop_table("bulk_enrollments")
