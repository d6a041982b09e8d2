"""The enrollment runner: a pure state machine over a published workflow version.

``start`` runs a new enrollment from its first step; ``finish_action`` continues it once the manual
action it waits for is completed or deleted. Both run automatic steps (Assign User) in order until
they reach a manual step, which produces exactly one ``ManualAction`` to queue (the enrollment then
waits), or the end of the workflow (the enrollment completes). No I/O: the caller loads the
inputs, persists the changed objects and publishes the events in one transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from workflow_runner.domain.assignment import smooth_weighted_pick
from workflow_runner.domain.enrollments import (
    ActionStatus,
    ActionType,
    Enrollment,
    EnrollmentStatus,
    HistoryEvent,
    ManualAction,
)
from workflow_runner.domain.errors import DomainError
from workflow_runner.domain.people import Contact, User
from workflow_runner.domain.steps import AssignUser, ManualCall, ManualSms, ManualStep, Step
from workflow_runner.domain.templates import merge_values, render
from workflow_runner.domain.workflows import WorkflowVersion


@dataclass(frozen=True)
class ActionRequested:
    """A manual action must be queued (published as ActionQueued)."""

    action: ManualAction


@dataclass(frozen=True)
class ContactAssigned:
    contact_id: uuid.UUID
    user_id: uuid.UUID
    previous_user_id: uuid.UUID | None


@dataclass(frozen=True)
class EnrollmentCompleted:
    enrollment_id: uuid.UUID


DomainEvent = ActionRequested | ContactAssigned | EnrollmentCompleted


@dataclass
class RunContext:
    """Everything a run may read or change.

    ``contact`` may get a new owner. ``round_robin`` maps an Assign User step id to that step's
    smooth weighted round robin scores (user id text -> score), for this workflow; the runner
    updates them (see ``assignment``).
    ``users`` holds the tenant's users the run may need (step users and the contact's owner).
    """

    workflow_name: str
    version: WorkflowVersion
    contact: Contact
    users: Mapping[uuid.UUID, User]
    round_robin: MutableMapping[str, dict[str, int]]
    now: datetime
    new_id: Callable[[], uuid.UUID] = uuid.uuid4


@dataclass
class RunResult:
    events: list[DomainEvent] = field(default_factory=list)

    @property
    def action(self) -> ManualAction | None:
        """The manual action to create, if the run stopped at a manual step."""
        return next((e.action for e in self.events if isinstance(e, ActionRequested)), None)

    @property
    def contact_changed(self) -> bool:
        return any(isinstance(e, ContactAssigned) for e in self.events)


class FinishKind(StrEnum):
    COMPLETED = "completed"
    DELETED = "deleted"


def start(enrollment: Enrollment, ctx: RunContext) -> RunResult:
    """Run a newly created enrollment from the first step."""
    if enrollment.status is not EnrollmentStatus.ACTIVE or enrollment.current_step_id is not None:
        raise DomainError(f"enrollment {enrollment.id} has already started")
    _check_pinned(enrollment, ctx)
    result = RunResult()
    _run_from(enrollment, ctx.version.steps(), 0, ctx, result)
    return result


def is_waiting_for(enrollment: Enrollment, action_id: uuid.UUID) -> bool:
    """True when ``action_id`` is the action this enrollment waits on; any other finished action
    (a duplicate, an old one, one for a stopped enrollment) must be ignored."""
    return enrollment.status is EnrollmentStatus.WAITING and enrollment.waiting_action_id == action_id


def finish_action(
    enrollment: Enrollment,
    action: ManualAction,
    kind: FinishKind,
    ctx: RunContext,
    *,
    outcome: str | None = None,
) -> RunResult:
    """Record that the awaited action finished and continue with the step after it.

    Returns an empty result (no change) when the enrollment is not waiting on this action. A deleted
    action continues the workflow just like a completed one (the person chose to drop this touch).
    """
    if not is_waiting_for(enrollment, action.id):
        return RunResult()
    _check_pinned(enrollment, ctx)
    steps = ctx.version.steps()
    index = next((i for i, s in enumerate(steps) if s.id == enrollment.current_step_id), None)
    if index is None:
        raise DomainError(f"step {enrollment.current_step_id!r} is not in version {ctx.version.number}")
    action.status = ActionStatus.COMPLETED if kind is FinishKind.COMPLETED else ActionStatus.DELETED
    action.finished_at = ctx.now
    action.outcome = outcome
    event = HistoryEvent.ACTION_COMPLETED if kind is FinishKind.COMPLETED else HistoryEvent.ACTION_DELETED
    detail: dict[str, str] = {"action_id": str(action.id)}
    if outcome is not None:
        detail["outcome"] = outcome
    enrollment.record(steps[index].id, ctx.now, event, **detail)
    enrollment.waiting_action_id = None
    result = RunResult()
    _run_from(enrollment, steps, index + 1, ctx, result)
    return result


def _check_pinned(enrollment: Enrollment, ctx: RunContext) -> None:
    if enrollment.workflow_version != ctx.version.number:
        raise DomainError(
            f"enrollment {enrollment.id} is pinned to version {enrollment.workflow_version}, "
            f"not {ctx.version.number}"
        )


def _run_from(
    enrollment: Enrollment, steps: Sequence[Step], index: int, ctx: RunContext, result: RunResult
) -> None:
    enrollment.status = EnrollmentStatus.ACTIVE
    for step in steps[index:]:
        enrollment.current_step_id = step.id
        if isinstance(step, AssignUser):
            _assign_user(enrollment, step, ctx, result)
            continue
        action = _manual_action(enrollment, step, ctx)
        detail: dict[str, str | None] = {
            "action_id": str(action.id),
            "action_type": action.action_type.value,
            "assignee_user_id": str(action.assignee_user_id) if action.assignee_user_id else None,
        }
        if action.contact_phone is None:
            detail["warning"] = "the contact has no valid phone number"
        enrollment.record(step.id, ctx.now, HistoryEvent.ACTION_QUEUED, **detail)
        enrollment.status = EnrollmentStatus.WAITING
        enrollment.waiting_action_id = action.id
        result.events.append(ActionRequested(action))
        return
    enrollment.status = EnrollmentStatus.COMPLETED
    enrollment.current_step_id = None
    enrollment.waiting_action_id = None
    enrollment.record(None, ctx.now, HistoryEvent.COMPLETED)
    result.events.append(EnrollmentCompleted(enrollment.id))


def _assign_user(enrollment: Enrollment, step: AssignUser, ctx: RunContext, result: RunResult) -> None:
    contact = ctx.contact
    previous = contact.owner_user_id
    if step.only_unassigned and previous is not None:
        enrollment.record(
            step.id,
            ctx.now,
            HistoryEvent.ASSIGNMENT_SKIPPED,
            reason="contact already assigned",
            user_id=str(previous),
        )
        return
    candidates: list[tuple[uuid.UUID, int]] = []
    passed_over: list[str] = []
    for index, user_id in enumerate(step.user_ids):
        found = ctx.users.get(user_id)
        if found is not None and found.can_take_work(
            ctx.now, respect_working_hours=step.respect_working_hours
        ):
            candidates.append((user_id, step.weight_of(index)))
        else:
            passed_over.append(str(user_id))
    picked = smooth_weighted_pick(ctx.round_robin.setdefault(step.id, {}), candidates)
    reason = "round robin"
    if picked is None:
        fallback = ctx.users.get(step.fallback_user_id) if step.fallback_user_id else None
        if fallback is None or fallback.deleted_at is not None:
            enrollment.record(
                step.id,
                ctx.now,
                HistoryEvent.ASSIGNMENT_FAILED,
                reason="nobody of the step is available; contact left as it was",
                unavailable_user_ids=passed_over,
            )
            return
        picked, reason = fallback.id, "fallback: nobody of the step is available"
    contact.assign_to(picked, ctx.now)
    enrollment.record(
        step.id,
        ctx.now,
        HistoryEvent.USER_ASSIGNED,
        user_id=str(picked),
        previous_user_id=str(previous) if previous else None,
        reason=reason,
        unavailable_user_ids=passed_over,
    )
    result.events.append(ContactAssigned(contact.id, picked, previous))


def _manual_action(enrollment: Enrollment, step: ManualStep, ctx: RunContext) -> ManualAction:
    contact = ctx.contact
    assignee = contact.owner_user_id
    values = merge_values(contact, ctx.users.get(assignee) if assignee else None)
    if isinstance(step, ManualSms):
        action_type, message, notes = ActionType.SMS, render(step.message, values), None
    elif isinstance(step, ManualCall):
        action_type, message = ActionType.CALL, None
        notes = render(step.notes, values) if step.notes is not None else None
    return ManualAction(
        id=ctx.new_id(),
        tenant=enrollment.tenant,
        enrollment_id=enrollment.id,
        workflow_id=enrollment.workflow_id,
        workflow_version=enrollment.workflow_version,
        workflow_name=ctx.workflow_name,
        step_id=step.id,
        action_type=action_type,
        action_name=step.action_name,
        contact_id=contact.id,
        contact_name=contact.name,
        contact_phone=contact.phone,
        assignee_user_id=assignee,
        message=message,
        notes=notes,
        status=ActionStatus.QUEUED,
        created_at=ctx.now,
    )
