"""The enrollment runner: a pure state machine over the step graph of a published version.

``start`` runs a new enrollment from its first step; ``finish_action`` continues it once the manual
action it waits for finished (completed, deleted, skipped, expired or failed); ``fire_timer``
continues it when its Wait ends or its manual step times out; ``stop`` ends it early (a goal was
reached). Each run walks instant steps (Assign User, Branch, Stop) until it reaches a pause: a
manual step queues exactly one ``ManualAction`` (plus a timeout timer when the step has one), a
Wait schedules a timer, and the end completes the enrollment. No I/O: the caller loads the inputs,
persists the changed objects and the new timers, and publishes the events in one transaction.

Every continuation is guarded by what the enrollment waits on (``waiting_action_id``,
``timer_id``), so a late or repeated event (an action finishing after its timeout fired, a timer
of an enrollment that already moved on) changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, MutableMapping
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
    Timer,
    TimerKind,
)
from workflow_runner.domain.errors import DomainError
from workflow_runner.domain.graph import StepGraph
from workflow_runner.domain.people import Contact, User
from workflow_runner.domain.steps import (
    AssignUser,
    Branch,
    ManualCall,
    ManualSms,
    ManualStep,
    Stop,
    Wait,
)
from workflow_runner.domain.templates import merge_values, render
from workflow_runner.domain.timing import format_duration
from workflow_runner.domain.workflows import WorkflowVersion

MAX_HOPS = 1000
"""Steps one run may pass; publishing refuses loops without a pause, so this only guards bad data."""


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


@dataclass(frozen=True)
class EnrollmentStopped:
    enrollment_id: uuid.UUID
    reason: str


@dataclass(frozen=True)
class TimerScheduled:
    """A timer row must be stored (in the same transaction as the enrollment)."""

    timer: Timer


@dataclass(frozen=True)
class CancelRequested:
    """A queued action is no longer wanted (published as CancelAction to action-queue)."""

    tenant: str
    action_id: uuid.UUID
    enrollment_id: uuid.UUID
    reason: str


DomainEvent = (
    ActionRequested
    | ContactAssigned
    | EnrollmentCompleted
    | EnrollmentStopped
    | TimerScheduled
    | CancelRequested
)


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

    @property
    def timers(self) -> list[Timer]:
        return [e.timer for e in self.events if isinstance(e, TimerScheduled)]

    @property
    def cancellations(self) -> list[CancelRequested]:
        return [e for e in self.events if isinstance(e, CancelRequested)]


class FinishKind(StrEnum):
    """How an action left the queue (the lifecycle event that says so)."""

    COMPLETED = "completed"
    DELETED = "deleted"
    SKIPPED = "skipped"
    EXPIRED = "expired"
    FAILED = "failed"


_FINISHED: dict[FinishKind, tuple[ActionStatus, HistoryEvent]] = {
    FinishKind.COMPLETED: (ActionStatus.COMPLETED, HistoryEvent.ACTION_COMPLETED),
    FinishKind.DELETED: (ActionStatus.DELETED, HistoryEvent.ACTION_DELETED),
    FinishKind.SKIPPED: (ActionStatus.SKIPPED, HistoryEvent.ACTION_SKIPPED),
    FinishKind.EXPIRED: (ActionStatus.EXPIRED, HistoryEvent.ACTION_EXPIRED),
    FinishKind.FAILED: (ActionStatus.FAILED, HistoryEvent.ACTION_FAILED),
}
SMS_SENT_OUTCOME = "sent"  # what action-queue records when our SMS went out
TIMED_OUT = "timed_out"


def outcome_key(kind: FinishKind, action_type: ActionType, outcome: str | None) -> str:
    """The key a Branch routes on: ``sms_sent`` for a sent SMS, the call outcome (``connected``,
    ``no_answer``, ..., or the tenant's custom slug) for a completed call, else the kind
    (``deleted``, ``skipped``, ``expired``, ``failed``)."""
    if kind is not FinishKind.COMPLETED:
        return kind.value
    if action_type is ActionType.SMS and outcome in (None, SMS_SENT_OUTCOME):
        return "sms_sent"
    return outcome or kind.value


def graph_of(version: WorkflowVersion) -> StepGraph:
    return version.graph()


def start(enrollment: Enrollment, ctx: RunContext) -> RunResult:
    """Run a newly created enrollment from the first step."""
    if enrollment.status is not EnrollmentStatus.ACTIVE or enrollment.current_step_id is not None:
        raise DomainError(f"enrollment {enrollment.id} has already started")
    _check_pinned(enrollment, ctx)
    result = RunResult()
    graph = graph_of(ctx.version)
    _run_from(enrollment, graph, graph.first, ctx, result)
    return result


def is_waiting_for(enrollment: Enrollment, action_id: uuid.UUID) -> bool:
    """True when ``action_id`` is the action this enrollment waits on; any other finished action
    (a duplicate, an old one, one kept after a timeout, one of a stopped enrollment) must be
    ignored."""
    return enrollment.status is EnrollmentStatus.WAITING and enrollment.waiting_action_id == action_id


def record_finish(action: ManualAction, kind: FinishKind, at: datetime, outcome: str | None = None) -> bool:
    """Note on our record how the action left the queue (first report wins); True if it changed."""
    if action.status is not ActionStatus.QUEUED:
        return False
    action.status = _FINISHED[kind][0]
    action.finished_at = at
    action.outcome = outcome
    return True


def finish_action(
    enrollment: Enrollment,
    action: ManualAction,
    kind: FinishKind,
    ctx: RunContext,
    *,
    outcome: str | None = None,
    reason: str | None = None,
) -> RunResult:
    """Record that the awaited action finished and continue with the step's successor (a Branch
    after it routes on ``outcome_key``). A timeout timer of the step becomes stale.

    Returns an empty result (no change) when the enrollment is not waiting on this action.
    """
    if not is_waiting_for(enrollment, action.id):
        return RunResult()
    _check_pinned(enrollment, ctx)
    graph = graph_of(ctx.version)
    step = graph.step(enrollment.current_step_id or "")
    record_finish(action, kind, ctx.now, outcome)
    detail: dict[str, str] = {"action_id": str(action.id)}
    if outcome is not None:
        detail["outcome"] = outcome
    if reason is not None:
        detail["reason"] = reason
    enrollment.record(step.id, ctx.now, _FINISHED[kind][1], **detail)
    enrollment.waiting_action_id = None
    enrollment.timer_id = None
    enrollment.last_outcome = outcome_key(kind, action.action_type, outcome)
    result = RunResult()
    _run_from(enrollment, graph, graph.successor(step), ctx, result)
    return result


def fire_timer(enrollment: Enrollment, timer: Timer, ctx: RunContext) -> RunResult | None:
    """Continue the enrollment its timer woke: after a Wait, at the Wait's successor; after a
    manual step's timeout, at ``timeout.then`` with outcome ``timed_out`` (asking action-queue to
    cancel the action when the step says so). None when the timer is stale."""
    if not enrollment.is_running or enrollment.timer_id != timer.id or enrollment.id != timer.enrollment_id:
        return None
    _check_pinned(enrollment, ctx)
    graph = graph_of(ctx.version)
    step = graph.step(timer.step_id)
    result = RunResult()
    enrollment.timer_id = None
    if timer.kind is TimerKind.WAIT:
        enrollment.record(step.id, ctx.now, HistoryEvent.WAIT_ENDED, due_at=timer.due_at.isoformat())
        _run_from(enrollment, graph, graph.successor(step), ctx, result)
        return result
    if not isinstance(step, ManualSms | ManualCall) or step.timeout is None:
        raise DomainError(f"timeout timer {timer.id} names step {step.id!r}, which has no timeout")
    action_id = enrollment.waiting_action_id
    enrollment.waiting_action_id = None
    enrollment.last_outcome = TIMED_OUT
    enrollment.record(
        step.id,
        ctx.now,
        HistoryEvent.TIMED_OUT,
        action_id=str(action_id) if action_id else None,
        after=format_duration(step.timeout.after),
        then=step.timeout.then,
        action="cancel" if step.timeout.cancel else "keep",
        reason=f"not finished within {format_duration(step.timeout.after)}",
    )
    if step.timeout.cancel and action_id is not None:
        result.events.append(
            CancelRequested(enrollment.tenant, action_id, enrollment.id, f"timed out at step {step.id}")
        )
    _run_from(enrollment, graph, graph.resolve(step.timeout.then), ctx, result)
    return result


def stop(
    enrollment: Enrollment, now: datetime, *, reason: str, goal: str | None = None, step_id: str | None = None
) -> RunResult:
    """End a running enrollment early: cancel the action it waits on (CancelAction), forget its
    timer. A goal reached is recorded as such. Nothing happens to an enrollment that has ended."""
    result = RunResult()
    if not enrollment.is_running:
        return result
    if goal is not None:
        enrollment.record(
            step_id or enrollment.current_step_id, now, HistoryEvent.GOAL_REACHED, goal=goal, reason=reason
        )
    _stop(enrollment, step_id or enrollment.current_step_id, now, reason, result)
    return result


def _stop(enrollment: Enrollment, step_id: str | None, now: datetime, reason: str, result: RunResult) -> None:
    if enrollment.waiting_action_id is not None:
        result.events.append(
            CancelRequested(enrollment.tenant, enrollment.waiting_action_id, enrollment.id, reason)
        )
    enrollment.record(
        step_id,
        now,
        HistoryEvent.STOPPED,
        reason=reason,
        cancelled_action_id=str(enrollment.waiting_action_id) if enrollment.waiting_action_id else None,
    )
    enrollment.status = EnrollmentStatus.STOPPED
    enrollment.waiting_action_id = None
    enrollment.timer_id = None
    result.events.append(EnrollmentStopped(enrollment.id, reason))


def _check_pinned(enrollment: Enrollment, ctx: RunContext) -> None:
    if enrollment.workflow_version != ctx.version.number:
        raise DomainError(
            f"enrollment {enrollment.id} is pinned to version {enrollment.workflow_version}, "
            f"not {ctx.version.number}"
        )


def _run_from(
    enrollment: Enrollment, graph: StepGraph, step_id: str | None, ctx: RunContext, result: RunResult
) -> None:
    """Walk from ``step_id`` (None: the end) until the enrollment pauses or ends."""
    enrollment.status = EnrollmentStatus.ACTIVE
    current = step_id
    for _ in range(MAX_HOPS):
        if current is None:
            break
        step = graph.step(current)
        enrollment.current_step_id = step.id
        if isinstance(step, AssignUser):
            _assign_user(enrollment, step, ctx, result)
            current = graph.successor(step)
        elif isinstance(step, Branch):
            target, matched = step.route(enrollment.last_outcome)
            current = graph.resolve(target) if target is not None else graph.successor(step)
            enrollment.record(
                step.id,
                ctx.now,
                HistoryEvent.BRANCH_TAKEN,
                outcome=enrollment.last_outcome,
                matched=matched,
                to=current or "end",
            )
        elif isinstance(step, Stop):
            _stop(enrollment, step.id, ctx.now, step.reason, result)
            return
        elif isinstance(step, Wait):
            _wait(enrollment, step, ctx, result)
            return
        else:
            _queue(enrollment, step, ctx, result)
            return
    else:
        raise DomainError(f"enrollment {enrollment.id} passed {MAX_HOPS} steps without pausing")
    enrollment.status = EnrollmentStatus.COMPLETED
    enrollment.current_step_id = None
    enrollment.waiting_action_id = None
    enrollment.timer_id = None
    enrollment.record(None, ctx.now, HistoryEvent.COMPLETED)
    result.events.append(EnrollmentCompleted(enrollment.id))


def _new_timer(
    enrollment: Enrollment,
    kind: TimerKind,
    step_id: str,
    due_at: datetime,
    ctx: RunContext,
    result: RunResult,
    action_id: uuid.UUID | None = None,
) -> Timer:
    timer = Timer(
        id=ctx.new_id(),
        tenant=enrollment.tenant,
        enrollment_id=enrollment.id,
        kind=kind,
        step_id=step_id,
        due_at=due_at,
        created_at=ctx.now,
        action_id=action_id,
    )
    enrollment.timer_id = timer.id
    result.events.append(TimerScheduled(timer))
    return timer


def _wait(enrollment: Enrollment, step: Wait, ctx: RunContext, result: RunResult) -> None:
    due = ctx.now + step.duration if step.duration is not None else ctx.now
    reasons = []
    if step.duration is not None:
        reasons.append(f"wait {format_duration(step.duration)}")
    if step.window is not None:
        timezone = ctx.contact.timezone or "UTC"
        due = step.window.next_in_window(due, ctx.contact.timezone)
        reasons.append(f"then until the window opens in the contact's time zone ({timezone})")
    _new_timer(enrollment, TimerKind.WAIT, step.id, due, ctx, result)
    enrollment.status = EnrollmentStatus.WAITING
    enrollment.record(
        step.id, ctx.now, HistoryEvent.WAIT_STARTED, until=due.isoformat(), reason=", ".join(reasons)
    )


def _queue(enrollment: Enrollment, step: ManualStep, ctx: RunContext, result: RunResult) -> None:
    action = _manual_action(enrollment, step, ctx)
    detail: dict[str, str | None] = {
        "action_id": str(action.id),
        "action_type": action.action_type.value,
        "assignee_user_id": str(action.assignee_user_id) if action.assignee_user_id else None,
    }
    if action.contact_phone is None:
        detail["warning"] = "the contact has no valid phone number"
    if step.timeout is not None:
        timer = _new_timer(
            enrollment, TimerKind.TIMEOUT, step.id, ctx.now + step.timeout.after, ctx, result, action.id
        )
        detail["timeout_at"] = timer.due_at.isoformat()
    enrollment.record(step.id, ctx.now, HistoryEvent.ACTION_QUEUED, **detail)
    enrollment.status = EnrollmentStatus.WAITING
    enrollment.waiting_action_id = action.id
    result.events.append(ActionRequested(action))


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
    template: str | None = None
    if isinstance(step, ManualSms):
        action_type, message, notes = ActionType.SMS, render(step.message, values), None
        template = step.message.source
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
        priority=step.priority,
        due_at=ctx.now + step.due_in if step.due_in is not None else None,
        expires_at=ctx.now + step.expires_in if step.expires_in is not None else None,
        message_template=template,
    )
