"""Bulk enrollment writes fewer rows: an enrollment names the run that started it.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23

A contact a run enrolled is found through its enrollment (``bulk_enrollment_id``), so
``bulk_enrollment_results`` keeps only the other outcomes (skips, restarts). The unique index is
what keeps a run from enrolling one contact twice (a chunk worked again fails on it), as the
results' primary key did, and serves the run's contact listing in contact id order.

The outbox's values are stored without compression: a bulk chunk's events are one batch row of
about 1 MB, and compressing it cost PostgreSQL about a third of that row's write (10 µs per
event, measured); the single rows stay under the size where PostgreSQL would compress anyway.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "enrollments",
        sa.Column(
            "bulk_enrollment_id",
            sa.Uuid(),
            nullable=True,
            comment="The bulk enrollment run that started it (null: started on its own)",
        ),
    )
    op.create_index(
        "ux_enrollments_bulk",
        "enrollments",
        ["tenant_id", "bulk_enrollment_id", "contact_id"],
        unique=True,
        postgresql_where=sa.text("bulk_enrollment_id IS NOT NULL"),
    )
    op.execute("ALTER TABLE outbox ALTER COLUMN value SET STORAGE EXTERNAL")


def downgrade() -> None:
    op.execute("ALTER TABLE outbox ALTER COLUMN value SET STORAGE EXTENDED")
    op.drop_index("ux_enrollments_bulk", table_name="enrollments")
    op.drop_column("enrollments", "bulk_enrollment_id")
