"""Smooth weighted round robin scores per Assign User step (decision 0011).

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
    op.add_column(
        "round_robin_positions",
        sa.Column(
            "scores",
            postgresql.JSONB(),
            nullable=False,
            server_default=sa.text("'{}'::jsonb"),
            comment="Smooth weighted round robin: user id -> running score",
        ),
    )
    op.alter_column(
        "round_robin_positions",
        "position",
        existing_type=sa.Integer(),
        existing_nullable=False,
        existing_server_default="0",
        comment="Unused since 0003 (scores)",
    )


def downgrade() -> None:
    op.alter_column(
        "round_robin_positions", "position", existing_type=sa.Integer(), existing_nullable=False, comment=None
    )
    op.drop_column("round_robin_positions", "scores")
