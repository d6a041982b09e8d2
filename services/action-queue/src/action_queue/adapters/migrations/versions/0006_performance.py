"""Indexes tuned by the benchmarks (bench/bench_action_queue_*.py, docs/benchmarks.md).

* ``ix_manual_actions_reservable``: Let's Start's candidates (queued, reserved, snoozed) per
  assignee, in exactly its order (priority desc, effective_due_at, queued_at, id). The query's
  condition on status is an OR (queued, or reserved with a lapsed lease, or snoozed with an ended
  snooze), which ``ix_manual_actions_queue`` (status as third key) cannot return in that order:
  the planner then walked a whole tenant's actions by priority and filtered by assignee (17 ms
  with 2,000 actions in a tenant, growing with the tenant). On this partial index the first row
  that passes the filter is the answer; only reserved and snoozed rows ahead of it are skipped.
* ``ix_manual_actions_by_priority_desc``: a list sorted ``-priority`` (priority desc, then the
  queue order ascending) could use ``ix_manual_actions_by_priority`` only backwards, which gives
  the ties in descending order: the whole top-priority group of the tenant was read and sorted for
  a page of 50 (22.6 ms with 1,000,000 actions).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_manual_actions_reservable",
        "manual_actions",
        ["tenant_id", "assignee_user_id", sa.text("priority DESC"), "effective_due_at", "queued_at", "id"],
        postgresql_where=sa.text("status IN ('queued', 'reserved', 'snoozed')"),
    )
    op.create_index(
        "ix_manual_actions_by_priority_desc",
        "manual_actions",
        ["tenant_id", sa.text("priority DESC"), "effective_due_at", "queued_at", "id"],
    )


def downgrade() -> None:
    op.drop_index("ix_manual_actions_by_priority_desc", "manual_actions")
    op.drop_index("ix_manual_actions_reservable", "manual_actions")
