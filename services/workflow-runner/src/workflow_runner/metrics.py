"""Metrics of the workflow-runner service, each declared once here with what it counts.

Counted after the transaction that made the change committed, so a rolled-back attempt counts nothing.
"""

from __future__ import annotations

from prometheus_client import Counter

# Contacts that entered a workflow (one per successful enrollment).
ENROLLMENTS_STARTED = Counter(
    "workflow_runner_enrollments_started_total",
    "Enrollments created.",
)

# Enrollments that went past their last step.
ENROLLMENTS_COMPLETED = Counter(
    "workflow_runner_enrollments_completed_total",
    "Enrollments that completed their workflow.",
)

# Manual actions queued (ActionQueued staged in the outbox), by action type (sms, call).
ACTIONS_QUEUED = Counter(
    "workflow_runner_actions_queued_total",
    "Manual actions queued for a person.",
    ["type"],
)

# ActionCompleted/ActionDeleted events consumed, by type and result: "advanced" (the enrollment
# moved on), "redelivered" (inbox hit), "not_waiting" (the enrollment does not wait on that action:
# a duplicate or out-of-date event), "unknown" (no such enrollment or action in that tenant).
FINISHED_EVENTS = Counter(
    "workflow_runner_finished_events_total",
    "Consumed ActionCompleted/ActionDeleted events by result.",
    ["type", "result"],
)

# Timers fired by the timer loop: "moved" (the enrollment went on), "stale" (it no longer waited
# on that timer: the action finished first or the enrollment stopped).
TIMERS_FIRED = Counter(
    "workflow_runner_timers_fired_total",
    "Timers (waits, timeouts) fired by result.",
    ["result"],
)
TIMER_FAILURES = Counter(
    "workflow_runner_timer_failures_total",
    "Timer batches that failed and were rolled back (retried after the interval).",
)

# Publish attempts refused because the draft had problems.
PUBLISH_REJECTED = Counter(
    "workflow_runner_publish_rejected_total",
    "Workflow publish attempts refused with problems.",
)
