"""Directory: teams; users gain team, time zone, availability, working hours, version, soft delete;
contacts gain tags, per-channel opt-out and do-not-disturb, external id, version, soft delete.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TENANT = sa.String(64)
TSTZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "teams",
        sa.Column("tenant_id", TENANT, nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", TSTZ, nullable=False),
        sa.Column("updated_at", TSTZ, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_teams"),
        sa.UniqueConstraint("tenant_id", "name", name="uq_teams_name"),
    )
    op.add_column("users", sa.Column("team_id", sa.Uuid(), nullable=True))
    op.add_column(
        "users",
        sa.Column(
            "timezone",
            sa.Text(),
            nullable=False,
            server_default="UTC",
            comment="IANA name; working hours are read in it",
        ),
    )
    op.add_column(
        "users", sa.Column("availability", sa.String(16), nullable=False, server_default="available")
    )
    op.add_column("users", sa.Column("unavailable_from", TSTZ, nullable=True))
    op.add_column("users", sa.Column("unavailable_until", TSTZ, nullable=True))
    op.add_column(
        "users",
        sa.Column(
            "working_hours",
            postgresql.JSONB(),
            nullable=True,
            comment="weekday -> [{start, end}]; NULL: no limit",
        ),
    )
    op.add_column("users", sa.Column("updated_at", TSTZ, nullable=True))
    op.add_column(
        "users",
        sa.Column(
            "version", sa.Integer(), nullable=False, server_default="1", comment="sequence of UserUpdated"
        ),
    )
    op.add_column("users", sa.Column("deleted_at", TSTZ, nullable=True))
    op.create_check_constraint(
        "ck_users_availability", "users", "availability IN ('available', 'away', 'out_of_office')"
    )
    op.create_foreign_key("fk_users_team", "users", "teams", ["tenant_id", "team_id"], ["tenant_id", "id"])
    op.create_index("ix_users_team", "users", ["tenant_id", "team_id"])
    op.create_index("ix_users_page", "users", ["tenant_id", "created_at", "id"])

    op.add_column(
        "contacts",
        sa.Column(
            "tags", postgresql.ARRAY(sa.Text()), nullable=False, server_default=sa.text("'{}'::text[]")
        ),
    )
    for flag in ("opted_out_sms", "opted_out_call", "dnd_sms", "dnd_call"):
        op.add_column(
            "contacts", sa.Column(flag, sa.Boolean(), nullable=False, server_default=sa.text("false"))
        )
    op.add_column(
        "contacts",
        sa.Column(
            "external_id", sa.Text(), nullable=True, comment="Id in the system the contact was imported from"
        ),
    )
    op.add_column(
        "contacts",
        sa.Column(
            "version", sa.Integer(), nullable=False, server_default="1", comment="sequence of ContactUpdated"
        ),
    )
    op.add_column("contacts", sa.Column("deleted_at", TSTZ, nullable=True))
    op.create_unique_constraint("uq_contacts_external_id", "contacts", ["tenant_id", "external_id"])
    op.create_index("ix_contacts_page", "contacts", ["tenant_id", "created_at", "id"])
    op.create_index("ix_contacts_tags", "contacts", ["tags"], postgresql_using="gin")


def downgrade() -> None:
    op.drop_index("ix_contacts_tags", table_name="contacts")
    op.drop_index("ix_contacts_page", table_name="contacts")
    op.drop_constraint("uq_contacts_external_id", "contacts", type_="unique")
    for column in (
        "deleted_at",
        "version",
        "external_id",
        "dnd_call",
        "dnd_sms",
        "opted_out_call",
        "opted_out_sms",
        "tags",
    ):
        op.drop_column("contacts", column)
    op.drop_index("ix_users_page", table_name="users")
    op.drop_index("ix_users_team", table_name="users")
    op.drop_constraint("fk_users_team", "users", type_="foreignkey")
    op.drop_constraint("ck_users_availability", "users", type_="check")
    for column in (
        "deleted_at",
        "version",
        "updated_at",
        "working_hours",
        "unavailable_until",
        "unavailable_from",
        "availability",
        "timezone",
        "team_id",
    ):
        op.drop_column("users", column)
    op.drop_table("teams")
