"""SQL tables of the action-queue database. Migrations (``migrations/versions``) create them; this
module is what the code and Alembic's autogenerate compare against."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    Computed,
    DateTime,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    Time,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from manual_actions.outbox import inbox_table, outbox_table

metadata = MetaData()

outbox = outbox_table(metadata)
inbox = inbox_table(metadata)

# One row per manual action, keyed by the action id workflow-runner chose. Contact, workflow and
# message are snapshots from ActionQueued; the rest is this service's own state.
manual_actions = Table(
    "manual_actions",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("action_type", String(8), nullable=False),
    Column("action_name", Text, nullable=False),
    Column("workflow_id", Uuid, nullable=False),
    Column("workflow_name", Text, nullable=False),
    Column("workflow_version", Integer, nullable=False),
    Column("step_id", Text, nullable=False),
    Column("enrollment_id", Uuid, nullable=False),
    Column("contact_id", Uuid, nullable=False),
    Column("contact_name", Text, nullable=False),
    Column("contact_phone", Text, nullable=True),
    Column("assignee_user_id", Uuid, nullable=True),
    Column("message", Text, nullable=True),
    Column("priority", SmallInteger, nullable=False),
    Column("status", String(24), nullable=False),
    Column("reserved_by", Uuid, nullable=True),
    Column("lease_expires_at", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("call_status", Text, nullable=True),
    Column("outcome", Text, nullable=True),
    Column("notes", Text, nullable=True),
    Column("pending_command_id", Uuid, nullable=True),
    Column("command_sequence", Integer, nullable=False, server_default="0"),
    Column("snoozed_until", DateTime(timezone=True), nullable=True),
    Column("send_at", DateTime(timezone=True), nullable=True),
    Column("scheduled_by", Uuid, nullable=True),
    Column("status_reason", Text, nullable=True),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("queued_at", DateTime(timezone=True), nullable=False),
    # ActionQueued v2: when it should be worked (null: as soon as possible) and the SMS template
    # rendered again with the contact's current data when a person opens the action.
    Column("due_at", DateTime(timezone=True), nullable=True),
    Column("message_template", Text, nullable=True),
    # What Let's Start and the due-time sort order by: an action without a due time is due when queued.
    Column("effective_due_at", DateTime(timezone=True),
           Computed("COALESCE(due_at, queued_at)", persisted=True), nullable=False),
    Column("completed_at", DateTime(timezone=True), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("version", Integer, nullable=False),
    Column("history", JSONB, nullable=False, server_default="[]"),
    CheckConstraint("action_type IN ('sms', 'call')", name="ck_manual_actions_type"),
    CheckConstraint(
        "status IN ('queued', 'reserved', 'snoozed', 'scheduled', 'sending', 'calling', "
        "'awaiting_outcome', 'completed', 'skipped', 'expired', 'failed', 'deleted')",
        name="ck_manual_actions_status",
    ),
    # Listing: keyset pagination over (queued_at, id) within a tenant.
    Index("ix_manual_actions_listing", "tenant_id", "queued_at", "id"),
    Index("ix_manual_actions_workflow", "tenant_id", "workflow_id"),
)

# Let's Start: an assignee's reservable actions in queue order
# (priority desc, effective_due_at, queued_at, id).
Index(
    "ix_manual_actions_queue",
    manual_actions.c.tenant_id,
    manual_actions.c.assignee_user_id,
    manual_actions.c.status,
    manual_actions.c.priority.desc(),
    manual_actions.c.effective_due_at,
    manual_actions.c.queued_at,
    manual_actions.c.id,
)
# Let's Start's candidates only, in its order: serves the OR over statuses of next_reservable
# (migration 0006).
Index(
    "ix_manual_actions_reservable",
    manual_actions.c.tenant_id,
    manual_actions.c.assignee_user_id,
    manual_actions.c.priority.desc(),
    manual_actions.c.effective_due_at,
    manual_actions.c.queued_at,
    manual_actions.c.id,
    postgresql_where=manual_actions.c.status.in_(["queued", "reserved", "snoozed"]),
)
# Listing sorted -priority: priority desc, then the queue order ascending (migration 0006).
Index("ix_manual_actions_by_priority_desc", manual_actions.c.tenant_id, manual_actions.c.priority.desc(),
      manual_actions.c.effective_due_at, manual_actions.c.queued_at, manual_actions.c.id)
# Listing sorted by due time or by priority (keyset pagination within a tenant).
Index("ix_manual_actions_by_due", manual_actions.c.tenant_id, manual_actions.c.effective_due_at,
      manual_actions.c.id)
Index("ix_manual_actions_by_priority", manual_actions.c.tenant_id, manual_actions.c.priority,
      manual_actions.c.effective_due_at, manual_actions.c.queued_at, manual_actions.c.id)

# The maintenance loop's work: lapsed leases, ended snoozes and due scheduled SMS, each found by time.
Index("ix_manual_actions_lease_due", manual_actions.c.lease_expires_at,
      postgresql_where=manual_actions.c.status == "reserved")
Index("ix_manual_actions_snooze_due", manual_actions.c.snoozed_until,
      postgresql_where=manual_actions.c.status == "snoozed")
Index("ix_manual_actions_send_due", manual_actions.c.send_at,
      postgresql_where=manual_actions.c.status == "scheduled")
Index("ix_manual_actions_expiry_due", manual_actions.c.expires_at,
      postgresql_where=manual_actions.c.status.in_(["queued", "reserved", "snoozed", "scheduled"])
      & manual_actions.c.expires_at.isnot(None))

# Bulk operations by the client's request id (idempotency key) within a tenant, with the position
# (last_id) the next chunk starts after.
bulk_requests = Table(
    "bulk_requests",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("request_id", String(100), nullable=False),
    Column("operation", String(16), nullable=False),
    Column("filters", JSONB, nullable=False),
    Column("assignee_user_id", Uuid, nullable=True),
    Column("until", DateTime(timezone=True), nullable=True),
    Column("reason", Text, nullable=True),
    Column("requested_by", Uuid, nullable=True),
    Column("status", String(16), nullable=False),
    Column("matched", Integer, nullable=False, server_default="0"),
    Column("changed", Integer, nullable=False, server_default="0"),
    Column("unchanged", Integer, nullable=False, server_default="0"),
    Column("last_id", Uuid, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    PrimaryKeyConstraint("tenant_id", "request_id", name="pk_bulk_requests"),
    Index("ix_bulk_requests_running", "created_at", postgresql_where=text("status = 'running'")),
)

# The contacts' current state as workflow-runner publishes it (ContactUpdated on
# manual-actions.contacts), for the checks at the moment of work. ``version`` is the envelope
# sequence of the state stored, so an older state arriving late never overwrites a newer one.
contacts = Table(
    "contacts",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("contact_id", Uuid, nullable=False),
    Column("phone", Text, nullable=True),
    Column("timezone", Text, nullable=True),
    # ContactUpdated v2: what SMS templates are rendered with when a person opens an action.
    Column("name", Text, nullable=True),
    Column("email", Text, nullable=True),
    Column("custom_fields", JSONB, nullable=False, server_default="{}"),
    Column("opted_out_sms", Boolean, nullable=False),
    Column("opted_out_call", Boolean, nullable=False),
    Column("dnd_sms", Boolean, nullable=False),
    Column("dnd_call", Boolean, nullable=False),
    Column("deleted", Boolean, nullable=False),
    Column("version", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("tenant_id", "contact_id", name="pk_contacts"),
)

# The team directory as workflow-runner publishes it (UserUpdated on the compacted topic
# manual-actions.users): team scope of managers, the agent phone of calls, the user's time zone,
# and availability for out of office. ``version`` is the envelope sequence of the state stored.
users = Table(
    "users",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("user_id", Uuid, nullable=False),
    Column("name", Text, nullable=False),
    Column("team_id", Uuid, nullable=True),
    Column("phone", Text, nullable=True),
    Column("timezone", Text, nullable=True),
    Column("role", String(16), nullable=False),
    Column("availability", String(16), nullable=False),
    Column("unavailable_from", DateTime(timezone=True), nullable=True),
    Column("unavailable_until", DateTime(timezone=True), nullable=True),
    Column("deleted", Boolean, nullable=False),
    Column("version", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("tenant_id", "user_id", name="pk_users"),
    Index("ix_users_team", "tenant_id", "team_id"),
)

# Per-tenant queue settings (GET/PUT /v1/settings); a tenant without a row uses the defaults.
tenant_settings = Table(
    "tenant_settings",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("outcomes", JSONB, nullable=False),
    Column("quiet_start", Time, nullable=False),
    Column("quiet_end", Time, nullable=False),
    Column("out_of_office", String(16), nullable=False),
    Column("away_counts_as_out", Boolean, nullable=False),
    Column("version", Integer, nullable=False),
    Column("updated_by", Uuid, nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("tenant_id", name="pk_tenant_settings"),
)
