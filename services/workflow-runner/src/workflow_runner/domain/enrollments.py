"""Enrollments (a contact going through one published workflow version) and the manual actions
they queue."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class EnrollmentStatus(StrEnum):
    ACTIVE = "active"  # running through automatic steps (only inside one transaction, in practice)
    WAITING = "waiting"  # on a manual action (waiting_action_id) and/or a timer (timer_id)
    COMPLETED = "completed"  # went past the last step
    STOPPED = "stopped"  # ended early (removed from the workflow)


class HistoryEvent(StrEnum):
    ENROLLED = "enrolled"
    USER_ASSIGNED = "user_assigned"
    ASSIGNMENT_SKIPPED = "assignment_skipped"
    ASSIGNMENT_FAILED = "assignment_failed"
    ACTION_QUEUED = "action_queued"
    ACTION_COMPLETED = "action_completed"
    ACTION_DELETED = "action_deleted"
    ACTION_SKIPPED = "action_skipped"
    ACTION_EXPIRED = "action_expired"
    ACTION_FAILED = "action_failed"
    TIMED_OUT = "timed_out"
    WAIT_STARTED = "wait_started"
    WAIT_ENDED = "wait_ended"
    BRANCH_TAKEN = "branch_taken"
    GOAL_REACHED = "goal_reached"
    COMPLETED = "completed"
    STOPPED = "stopped"


@dataclass(frozen=True)
class HistoryEntry:
    """What happened at which step; ``detail`` is JSON-serialisable."""

    step_id: str | None
    at: datetime
    event: HistoryEvent
    detail: dict[str, Any] = field(default_factory=dict)


class ActionType(StrEnum):
    SMS = "sms"
    CALL = "call"


class ActionStatus(StrEnum):
    QUEUED = "queued"
    COMPLETED = "completed"
    DELETED = "deleted"
    SKIPPED = "skipped"
    EXPIRED = "expired"
    FAILED = "failed"


class TimerKind(StrEnum):
    WAIT = "wait"  # a Wait step ends
    TIMEOUT = "timeout"  # a manual step's timeout


@dataclass
class Timer:
    """A durable wake-up of an enrollment (a row of ``timers``). It only acts while the enrollment's
    ``timer_id`` still names it; any other firing (the action finished first, the enrollment
    stopped) is stale and changes nothing."""

    id: uuid.UUID
    tenant: str
    enrollment_id: uuid.UUID
    kind: TimerKind
    step_id: str
    due_at: datetime
    created_at: datetime
    action_id: uuid.UUID | None = None
    fired_at: datetime | None = None


@dataclass
class ManualAction:
    """Our record of a manual action we asked action-queue to hold for a person.

    action-queue owns the action's working state; we keep what we queued and how it finished, to
    continue the enrollment exactly once.
    """

    id: uuid.UUID
    tenant: str
    enrollment_id: uuid.UUID
    workflow_id: uuid.UUID
    workflow_version: int
    workflow_name: str
    step_id: str
    action_type: ActionType
    action_name: str
    contact_id: uuid.UUID
    contact_name: str
    contact_phone: str | None
    assignee_user_id: uuid.UUID | None
    message: str | None
    notes: str | None
    status: ActionStatus
    created_at: datetime
    finished_at: datetime | None = None
    outcome: str | None = None
    # Published with ActionQueued only (action-queue keeps them); not stored in our table.
    priority: int = 0
    due_at: datetime | None = None
    expires_at: datetime | None = None
    message_template: str | None = None


@dataclass
class Enrollment:
    """A contact's pass through a pinned workflow version. ``waiting_action_id`` is the manual
    action it waits for while ``status`` is waiting, ``timer_id`` the timer that may wake it (a
    Wait step's end or a manual step's timeout). ``last_outcome`` is the outcome key of its latest
    manual action, what a Branch step routes on. ``history`` is append-only."""

    id: uuid.UUID
    tenant: str
    contact_id: uuid.UUID
    workflow_id: uuid.UUID
    workflow_version: int
    status: EnrollmentStatus
    current_step_id: str | None
    waiting_action_id: uuid.UUID | None
    history: list[HistoryEntry]
    created_at: datetime
    updated_at: datetime
    timer_id: uuid.UUID | None = None
    last_outcome: str | None = None

    @classmethod
    def start(
        cls,
        *,
        tenant: str,
        contact_id: uuid.UUID,
        workflow_id: uuid.UUID,
        workflow_version: int,
        now: datetime,
        enrollment_id: uuid.UUID | None = None,
    ) -> Enrollment:
        enrollment = cls(
            id=enrollment_id or uuid.uuid4(),
            tenant=tenant,
            contact_id=contact_id,
            workflow_id=workflow_id,
            workflow_version=workflow_version,
            status=EnrollmentStatus.ACTIVE,
            current_step_id=None,
            waiting_action_id=None,
            history=[],
            created_at=now,
            updated_at=now,
        )
        enrollment.record(None, now, HistoryEvent.ENROLLED, workflow_version=workflow_version)
        return enrollment

    @property
    def is_running(self) -> bool:
        return self.status in (EnrollmentStatus.ACTIVE, EnrollmentStatus.WAITING)

    def record(self, step_id: str | None, at: datetime, event: HistoryEvent, **detail: Any) -> None:
        self.history.append(HistoryEntry(step_id=step_id, at=at, event=event, detail=detail))
        self.updated_at = at
