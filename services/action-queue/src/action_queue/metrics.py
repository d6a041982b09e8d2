"""Metrics of the action-queue service, each declared once here with what it counts."""

from __future__ import annotations

from prometheus_client import Counter

# Consumed messages that changed an action, by message type (ActionQueued, SmsSent, ...).
EVENTS_APPLIED = Counter(
    "action_queue_events_applied_total",
    "Consumed messages that changed a manual action.",
    ["type"],
)

# Consumed messages deliberately left without effect, by type and reason: "redelivered" (inbox hit),
# "duplicate_action" (ActionQueued for an action we already hold), "own_event" (our own
# ActionCompleted/ActionDeleted read back), "stale_result" (a result for a command that no longer
# applies, e.g. the action was deleted while its SMS was being sent).
EVENTS_IGNORED = Counter(
    "action_queue_events_ignored_total",
    "Consumed messages that were deliberately not applied.",
    ["type", "reason"],
)

# POST /v1/queue/next outcomes: "reserved" (an action was handed out), "empty" (204), "held" (the
# caller is out of office and the tenant holds their actions); "changed" counts candidates passed
# over because someone else changed them while they were being reserved (several per request).
RESERVATIONS = Counter(
    "action_queue_reservations_total",
    "Let's Start requests by result.",
    ["result"],
)

# Commands committed to the outbox for the Twilio-facing services, by type (SendSms, PlaceCall).
COMMANDS_ISSUED = Counter(
    "action_queue_commands_issued_total",
    "Commands issued to sms-sender and dialer.",
    ["type"],
)

# Lifecycle events committed to the outbox, by type (ActionCompleted, ActionDeleted): counted when
# their unit of work commits, so a rolled-back change or a lost Let's Start race counts nothing.
LIFECYCLE_EVENTS = Counter(
    "action_queue_lifecycle_events_total",
    "Lifecycle events this service published.",
    ["type"],
)

# Changes the maintenance loop made by itself, by the lifecycle event that recorded them:
# ActionExpired, ActionReleased (lease lapsed), ActionRequeued (snooze ended), ActionSmsRequested
# (scheduled SMS sent) or ActionSkipped (a scheduled SMS that could not be sent).
MAINTENANCE = Counter(
    "action_queue_maintenance_changes_total",
    "Actions the maintenance loop changed, by event type.",
    ["type"],
)

# Maintenance batches and bulk chunks that raised and were rolled back (retried after the interval).
MAINTENANCE_FAILURES = Counter(
    "action_queue_maintenance_failures_total",
    "Maintenance batches and bulk chunks that failed and were rolled back.",
)

# Actions changed by bulk requests, by operation (reassign, delete, snooze).
BULK_CHANGES = Counter(
    "action_queue_bulk_changes_total",
    "Actions changed by bulk requests.",
    ["operation"],
)

# Actions skipped because a check at the moment of work blocked them (opt-out, do-not-disturb,
# invalid number, quiet hours), by action type.
BLOCKED = Counter(
    "action_queue_blocked_at_work_total",
    "Actions skipped by a check at the moment of work.",
    ["type"],
)

#: Every metric above: the service's child processes (see ``entrypoints.main``) count into them too,
#: so the parent exports each merged with the children's values.
ALL = (EVENTS_APPLIED, EVENTS_IGNORED, RESERVATIONS, COMMANDS_ISSUED, LIFECYCLE_EVENTS, MAINTENANCE,
       MAINTENANCE_FAILURES, BULK_CHANGES, BLOCKED)
