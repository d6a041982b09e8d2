"""SQL tables of the workflow-runner database. Migrations (``migrations/versions``) create them; this
module is what the repositories and Alembic's autogenerate use.

Every business table carries ``tenant_id`` as the first column of its primary key, and every
repository query filters by it: one tenant's rows are unreachable with another tenant's id.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from manual_actions.outbox import inbox_table, outbox_table

TENANT = String(64)

metadata = MetaData()

outbox = outbox_table(metadata)
inbox = inbox_table(metadata)

teams = Table(
    "teams",
    metadata,
    Column("tenant_id", TENANT, nullable=False),
    Column("id", Uuid, nullable=False),
    Column("name", Text, nullable=False),
    Column("description", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("tenant_id", "id", name="pk_teams"),
    UniqueConstraint("tenant_id", "name", name="uq_teams_name"),
)

# Deleted users keep their row (deleted_at set): actions and history still name them.
users = Table(
    "users",
    metadata,
    Column("tenant_id", TENANT, nullable=False),
    Column("id", Uuid, nullable=False),
    Column("name", Text, nullable=False),
    Column("phone", Text, nullable=False, comment="E.164"),
    Column("role", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("team_id", Uuid, nullable=True),
    Column(
        "timezone",
        Text,
        nullable=False,
        server_default="UTC",
        comment="IANA name; working hours are read in it",
    ),
    Column("availability", String(16), nullable=False, server_default="available"),
    Column("unavailable_from", DateTime(timezone=True), nullable=True),
    Column("unavailable_until", DateTime(timezone=True), nullable=True),
    Column("working_hours", JSONB, nullable=True, comment="weekday -> [{start, end}]; NULL: no limit"),
    Column("updated_at", DateTime(timezone=True), nullable=True),
    Column("version", Integer, nullable=False, server_default="1", comment="sequence of UserUpdated"),
    Column("deleted_at", DateTime(timezone=True), nullable=True),
    PrimaryKeyConstraint("tenant_id", "id", name="pk_users"),
    CheckConstraint("role IN ('admin', 'manager', 'agent')", name="ck_users_role"),
    CheckConstraint("availability IN ('available', 'away', 'out_of_office')", name="ck_users_availability"),
    ForeignKeyConstraint(["tenant_id", "team_id"], ["teams.tenant_id", "teams.id"], name="fk_users_team"),
    Index("ix_users_team", "tenant_id", "team_id"),
    Index("ix_users_page", "tenant_id", "created_at", "id"),
)

contacts = Table(
    "contacts",
    metadata,
    Column("tenant_id", TENANT, nullable=False),
    Column("id", Uuid, nullable=False),
    Column("name", Text, nullable=False),
    Column("first_name", Text, nullable=False),
    Column("last_name", Text, nullable=False),
    Column("phone", Text, nullable=True, comment="E.164, or NULL when the contact has no valid number"),
    Column("email", Text, nullable=True),
    Column("timezone", Text, nullable=True, comment="IANA name"),
    Column("custom_fields", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("owner_user_id", Uuid, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("tags", ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
    Column("opted_out_sms", Boolean, nullable=False, server_default=text("false")),
    Column("opted_out_call", Boolean, nullable=False, server_default=text("false")),
    Column("dnd_sms", Boolean, nullable=False, server_default=text("false")),
    Column("dnd_call", Boolean, nullable=False, server_default=text("false")),
    Column("external_id", Text, nullable=True, comment="Id in the system the contact was imported from"),
    Column("version", Integer, nullable=False, server_default="1", comment="sequence of ContactUpdated"),
    Column("deleted_at", DateTime(timezone=True), nullable=True),
    PrimaryKeyConstraint("tenant_id", "id", name="pk_contacts"),
    ForeignKeyConstraint(
        ["tenant_id", "owner_user_id"], ["users.tenant_id", "users.id"], name="fk_contacts_owner"
    ),
    # NULLs are distinct, so only contacts that have an external id are unique by it (import upsert).
    UniqueConstraint("tenant_id", "external_id", name="uq_contacts_external_id"),
    Index("ix_contacts_owner", "tenant_id", "owner_user_id"),
    Index("ix_contacts_page", "tenant_id", "created_at", "id"),
    Index("ix_contacts_tags", "tags", postgresql_using="gin"),
)

workflows = Table(
    "workflows",
    metadata,
    Column("tenant_id", TENANT, nullable=False),
    Column("id", Uuid, nullable=False),
    Column("name", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("tenant_id", "id", name="pk_workflows"),
)

# A published row is never updated (the repository only rewrites drafts): enrollments pin one.
workflow_versions = Table(
    "workflow_versions",
    metadata,
    Column("tenant_id", TENANT, nullable=False),
    Column("workflow_id", Uuid, nullable=False),
    Column("version", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("steps", JSONB, nullable=False, comment="Step specs as authored"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("published_at", DateTime(timezone=True), nullable=True),
    Column(
        "goals",
        JSONB,
        nullable=False,
        server_default=text("'[]'::jsonb"),
        comment="Goals that stop an enrollment (replied, opted_out, do_not_disturb)",
    ),
    PrimaryKeyConstraint("tenant_id", "workflow_id", "version", name="pk_workflow_versions"),
    ForeignKeyConstraint(
        ["tenant_id", "workflow_id"],
        ["workflows.tenant_id", "workflows.id"],
        name="fk_workflow_versions_workflow",
    ),
    CheckConstraint("status IN ('draft', 'published')", name="ck_workflow_versions_status"),
    CheckConstraint("version >= 1", name="ck_workflow_versions_version"),
)

# Round robin state of each Assign User step (smooth weighted scores; decision 0011). Rows are
# created at publish so that an enrollment can lock them (SELECT ... FOR UPDATE) and concurrent
# enrollments take turns.
round_robin_positions = Table(
    "round_robin_positions",
    metadata,
    Column("tenant_id", TENANT, nullable=False),
    Column("workflow_id", Uuid, nullable=False),
    Column("step_id", Text, nullable=False),
    Column("position", Integer, nullable=False, server_default="0", comment="Unused since 0003 (scores)"),
    Column(
        "scores",
        JSONB,
        nullable=False,
        server_default=text("'{}'::jsonb"),
        comment="Smooth weighted round robin: user id -> running score",
    ),
    PrimaryKeyConstraint("tenant_id", "workflow_id", "step_id", name="pk_round_robin_positions"),
)

enrollments = Table(
    "enrollments",
    metadata,
    Column("tenant_id", TENANT, nullable=False),
    Column("id", Uuid, nullable=False),
    Column("contact_id", Uuid, nullable=False),
    Column("workflow_id", Uuid, nullable=False),
    Column("workflow_version", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("current_step_id", Text, nullable=True),
    Column("waiting_action_id", Uuid, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("timer_id", Uuid, nullable=True, comment="The timer that may wake it; any other is stale"),
    Column("last_outcome", Text, nullable=True, comment="Outcome key of its latest manual action"),
    Column(
        "bulk_enrollment_id",
        Uuid,
        nullable=True,
        comment="The bulk enrollment run that started it (null: started on its own)",
    ),
    PrimaryKeyConstraint("tenant_id", "id", name="pk_enrollments"),
    ForeignKeyConstraint(
        ["tenant_id", "contact_id"], ["contacts.tenant_id", "contacts.id"], name="fk_enrollments_contact"
    ),
    ForeignKeyConstraint(
        ["tenant_id", "workflow_id", "workflow_version"],
        ["workflow_versions.tenant_id", "workflow_versions.workflow_id", "workflow_versions.version"],
        name="fk_enrollments_version",
    ),
    CheckConstraint("status IN ('active', 'waiting', 'completed', 'stopped')", name="ck_enrollments_status"),
    # At most one running enrollment per contact and workflow (the handler checks first; this is the net).
    Index(
        "ux_enrollments_running",
        "tenant_id",
        "workflow_id",
        "contact_id",
        unique=True,
        postgresql_where=text("status IN ('active', 'waiting')"),
    ),
    Index("ix_enrollments_contact", "tenant_id", "contact_id"),
    # A run enrolls a contact once (migration 0006); also its enrolled contacts in id order.
    Index(
        "ux_enrollments_bulk",
        "tenant_id",
        "bulk_enrollment_id",
        "contact_id",
        unique=True,
        postgresql_where=text("bulk_enrollment_id IS NOT NULL"),
    ),
)

enrollment_history = Table(
    "enrollment_history",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True, comment="Order of entries"),
    Column("tenant_id", TENANT, nullable=False),
    Column("enrollment_id", Uuid, nullable=False),
    Column("step_id", Text, nullable=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("event", String(32), nullable=False),
    Column("detail", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    ForeignKeyConstraint(
        ["tenant_id", "enrollment_id"],
        ["enrollments.tenant_id", "enrollments.id"],
        name="fk_enrollment_history_enrollment",
    ),
    Index("ix_enrollment_history_enrollment", "tenant_id", "enrollment_id", "id"),
)

# The manual actions this service queued: what was asked and how it finished. action-queue owns
# their working state; this is what the runner needs to continue an enrollment exactly once.
manual_actions = Table(
    "manual_actions",
    metadata,
    Column("tenant_id", TENANT, nullable=False),
    Column("id", Uuid, nullable=False),
    Column("enrollment_id", Uuid, nullable=False),
    Column("workflow_id", Uuid, nullable=False),
    Column("workflow_version", Integer, nullable=False),
    Column("workflow_name", Text, nullable=False),
    Column("step_id", Text, nullable=False),
    Column("action_type", String(8), nullable=False),
    Column("action_name", Text, nullable=False),
    Column("contact_id", Uuid, nullable=False),
    Column("contact_name", Text, nullable=False),
    Column("contact_phone", Text, nullable=True),
    Column("assignee_user_id", Uuid, nullable=True),
    Column("message", Text, nullable=True),
    Column("notes", Text, nullable=True),
    Column("status", String(16), nullable=False),
    Column("outcome", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    PrimaryKeyConstraint("tenant_id", "id", name="pk_manual_actions"),
    ForeignKeyConstraint(
        ["tenant_id", "enrollment_id"],
        ["enrollments.tenant_id", "enrollments.id"],
        name="fk_manual_actions_enrollment",
    ),
    CheckConstraint("action_type IN ('sms', 'call')", name="ck_manual_actions_type"),
    CheckConstraint(
        "status IN ('queued', 'completed', 'deleted', 'skipped', 'expired', 'failed')",
        name="ck_manual_actions_status",
    ),
    Index("ix_manual_actions_enrollment", "tenant_id", "enrollment_id"),
)

# Durable wake-ups of enrollments (migration 0004): a Wait step's end or a manual step's timeout.
# Written in the enrollment's transaction; the timer loop claims due rows FOR UPDATE SKIP LOCKED
# and sets fired_at in the transaction that moves the enrollment on (decision 0013).
timers = Table(
    "timers",
    metadata,
    Column("tenant_id", TENANT, nullable=False),
    Column("id", Uuid, nullable=False),
    Column("enrollment_id", Uuid, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("step_id", Text, nullable=False),
    Column("action_id", Uuid, nullable=True, comment="Timeouts: the action the step queued"),
    Column("due_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("fired_at", DateTime(timezone=True), nullable=True),
    PrimaryKeyConstraint("tenant_id", "id", name="pk_timers"),
    ForeignKeyConstraint(
        ["tenant_id", "enrollment_id"],
        ["enrollments.tenant_id", "enrollments.id"],
        name="fk_timers_enrollment",
    ),
    CheckConstraint("kind IN ('wait', 'timeout')", name="ck_timers_kind"),
    Index("ix_timers_due", "due_at", postgresql_where=text("fired_at IS NULL")),
    Index("ix_timers_enrollment", "tenant_id", "enrollment_id"),
)

# --- bulk enrollment (migration 0005) -------------------------------------------------------------

# One bulk enrollment run: what to enroll (a snapshot of its target contacts below), how (all at
# once, or drip batches every interval) and how far it got. ``position`` is the last target seq
# worked; it commits with each chunk, so a restarted loop resumes right after the last chunk.
bulk_enrollments = Table(
    "bulk_enrollments",
    metadata,
    Column("tenant_id", TENANT, nullable=False),
    Column("id", Uuid, nullable=False),
    Column("request_id", Text, nullable=False, comment="Client's idempotency key (unique per tenant)"),
    Column("fingerprint", Text, nullable=False, comment="Hash of the request; a reused id must match it"),
    Column("workflow_id", Uuid, nullable=False),
    Column("workflow_version", Integer, nullable=False, comment="Published version pinned at submit"),
    Column("target", JSONB, nullable=False, comment="{kind: filter|list, filter: {...}}"),
    Column("policy", String(32), nullable=False),
    Column("delivery", String(16), nullable=False),
    Column("batch_size", Integer, nullable=True, comment="Drip: contacts per batch"),
    Column("interval_seconds", Integer, nullable=True, comment="Drip: seconds between batches"),
    Column("status", String(16), nullable=False),
    Column("total", Integer, nullable=False),
    Column("position", Integer, nullable=False, server_default="0", comment="Last target seq worked"),
    Column("batch_done", Integer, nullable=False, server_default="0", comment="Drip: worked in this batch"),
    Column("enrolled", Integer, nullable=False, server_default="0"),
    Column("skipped", JSONB, nullable=False, server_default=text("'{}'::jsonb"), comment="reason -> count"),
    Column("next_due_at", DateTime(timezone=True), nullable=True, comment="When the next chunk may run"),
    Column("requested_by", Uuid, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    PrimaryKeyConstraint("tenant_id", "id", name="pk_bulk_enrollments"),
    UniqueConstraint("tenant_id", "request_id", name="uq_bulk_enrollments_request"),
    CheckConstraint(
        "status IN ('running', 'paused', 'cancelled', 'done')", name="ck_bulk_enrollments_status"
    ),
    CheckConstraint(
        "policy IN ('skip_if_enrolled_ever', 'skip_if_active', 'allow_reenrollment')",
        name="ck_bulk_enrollments_policy",
    ),
    CheckConstraint("delivery IN ('all_at_once', 'drip')", name="ck_bulk_enrollments_delivery"),
    Index(
        "ix_bulk_enrollments_due",
        "next_due_at",
        postgresql_where=text("status = 'running'"),
    ),
)

# The run's contacts in the order they are worked, fixed at submit (a filter is evaluated once).
bulk_enrollment_targets = Table(
    "bulk_enrollment_targets",
    metadata,
    Column("tenant_id", TENANT, nullable=False),
    Column("run_id", Uuid, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("contact_id", Uuid, nullable=False),
    PrimaryKeyConstraint("tenant_id", "run_id", "seq", name="pk_bulk_enrollment_targets"),
    UniqueConstraint("tenant_id", "run_id", "contact_id", name="uq_bulk_enrollment_targets_contact"),
    ForeignKeyConstraint(
        ["tenant_id", "run_id"],
        ["bulk_enrollments.tenant_id", "bulk_enrollments.id"],
        name="fk_bulk_enrollment_targets_run",
        ondelete="CASCADE",
    ),
)

# What the run did with each contact, written in the chunk's transaction. Insert-only; the primary
# key is the net under "never enroll a contact twice in one run": a chunk worked twice would fail.
bulk_enrollment_results = Table(
    "bulk_enrollment_results",
    metadata,
    Column("tenant_id", TENANT, nullable=False),
    Column("run_id", Uuid, nullable=False),
    Column("contact_id", Uuid, nullable=False),
    Column("outcome", String(32), nullable=False, comment="enrolled or skipped_<reason>"),
    Column("enrollment_id", Uuid, nullable=True),
    Column("at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("tenant_id", "run_id", "contact_id", name="pk_bulk_enrollment_results"),
    ForeignKeyConstraint(
        ["tenant_id", "run_id"],
        ["bulk_enrollments.tenant_id", "bulk_enrollments.id"],
        name="fk_bulk_enrollment_results_run",
        ondelete="CASCADE",
    ),
)
