"""The use cases. Each public coroutine runs in one unit of work; a change and the events it causes
commit together or not at all."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from manual_actions.contracts import ActionQueued, ContactSnapshot, Envelope
from manual_actions.contracts import ActionType as ContractActionType
from manual_actions.contracts.topics import ACTION_LIFECYCLE, CONTACTS
from workflow_runner import metrics
from workflow_runner.domain import runner
from workflow_runner.domain.enrollments import Enrollment, ManualAction
from workflow_runner.domain.errors import (
    AlreadyEnrolled,
    NotFound,
    WorkflowInvalid,
    WorkflowNotPublished,
)
from workflow_runner.domain.people import Contact
from workflow_runner.domain.steps import AssignUser, referenced_user_ids
from workflow_runner.domain.workflows import Workflow, WorkflowVersion
from workflow_runner.handlers.commands import (
    ActionFinished,
    CreateWorkflow,
    Enroll,
    PublishWorkflow,
    SaveDraft,
)
from workflow_runner.handlers.directory import (  # noqa: F401  (the directory's use cases, re-exported)
    contact_updated,
    create_contact,
    create_team,
    create_user,
    delete_contact,
    delete_team,
    delete_user,
    get_contact,
    get_team,
    get_user,
    import_contacts,
    list_contacts,
    list_teams,
    list_users,
    update_contact,
    update_team,
    update_user,
    user_updated,
)
from workflow_runner.handlers.goals import apply_effects
from workflow_runner.handlers.ports import UnitOfWork

SOURCE = "workflow-runner"
INBOX_CONSUMER = "workflow-runner"
# workflow-runner publishes only the first message about an action; action-queue continues at 2.
ACTION_QUEUED_SEQUENCE = 1

Clock = Callable[[], datetime]

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


# --- workflows ----------------------------------------------------------------------------------


async def create_workflow(uow: UnitOfWork, cmd: CreateWorkflow, *, clock: Clock = utcnow) -> Workflow:
    """A workflow whose version 1 is a draft; steps are checked when it is published."""
    async with uow:
        workflow = Workflow.create(
            tenant=cmd.tenant, name=cmd.name, steps=cmd.steps, now=clock(), goals=cmd.goals
        )
        await uow.workflows.add(workflow)
        await uow.commit()
    return workflow


async def get_workflow(uow: UnitOfWork, tenant: str, workflow_id: uuid.UUID) -> Workflow:
    async with uow:
        workflow = await uow.workflows.get(tenant, workflow_id)
    if workflow is None:
        raise NotFound("workflow", workflow_id)
    return workflow


async def list_workflows(
    uow: UnitOfWork, tenant: str, *, limit: int = 100, offset: int = 0
) -> Sequence[Workflow]:
    async with uow:
        return await uow.workflows.list(tenant, limit=limit, offset=offset)


async def save_draft(uow: UnitOfWork, cmd: SaveDraft, *, clock: Clock = utcnow) -> Workflow:
    """Replace the draft's steps (and optionally the name); starts a new draft after a publish."""
    async with uow:
        workflow = await uow.workflows.get(cmd.tenant, cmd.workflow_id, for_update=True)
        if workflow is None:
            raise NotFound("workflow", cmd.workflow_id)
        if cmd.name is not None:
            workflow.rename(cmd.name, clock())
        workflow.save_draft(cmd.steps, clock(), goals=cmd.goals)
        await uow.workflows.save(workflow)
        await uow.commit()
    return workflow


async def publish_workflow(uow: UnitOfWork, cmd: PublishWorkflow, *, clock: Clock = utcnow) -> Workflow:
    """Validate and publish the draft; raises WorkflowInvalid listing every problem."""
    async with uow:
        workflow = await uow.workflows.get(cmd.tenant, cmd.workflow_id, for_update=True)
        if workflow is None:
            raise NotFound("workflow", cmd.workflow_id)
        draft = workflow.draft
        if draft is None:
            return workflow
        mentioned = referenced_user_ids(draft.step_specs)
        known = await uow.users.get_many(cmd.tenant, mentioned)
        try:
            published = workflow.publish(known.keys(), clock())
        except WorkflowInvalid:
            metrics.PUBLISH_REJECTED.inc()
            raise
        await uow.workflows.save(workflow)
        await uow.round_robin.ensure(
            cmd.tenant, workflow.id, [s.id for s in published.steps() if isinstance(s, AssignUser)]
        )
        await uow.commit()
    return workflow


# --- enrollments --------------------------------------------------------------------------------


async def enroll(
    uow: UnitOfWork, cmd: Enroll, *, clock: Clock = utcnow, new_id: Callable[[], uuid.UUID] = uuid.uuid4
) -> Enrollment:
    """Enter the contact into the workflow's newest published version and run it to its first manual
    step. The enrollment, the contact's new owner, the manual action and its ActionQueued event
    commit in one transaction.

    Raises NotFound (workflow or contact), WorkflowNotPublished, AlreadyEnrolled.
    """
    async with uow:
        workflow = await uow.workflows.get(cmd.tenant, cmd.workflow_id)
        if workflow is None:
            raise NotFound("workflow", cmd.workflow_id)
        version = workflow.published
        if version is None:
            raise WorkflowNotPublished(workflow.id)
        # The contact row lock serialises enrollments of one contact, so the check below is race-free.
        contact = await uow.contacts.get(cmd.tenant, cmd.contact_id, for_update=True)
        if contact is None:
            raise NotFound("contact", cmd.contact_id)
        running = await uow.enrollments.running_for(cmd.tenant, workflow.id, contact.id)
        if running is not None:
            raise AlreadyEnrolled(workflow.id, contact.id, running.id)
        now = clock()
        enrollment = Enrollment.start(
            tenant=cmd.tenant,
            contact_id=contact.id,
            workflow_id=workflow.id,
            workflow_version=version.number,
            now=now,
        )
        ctx = await _run_context(uow, workflow, version, contact, now, new_id)
        result = runner.start(enrollment, ctx)
        await uow.enrollments.add(enrollment)
        await _apply(uow, workflow.id, ctx, result, causation_id=None)
        await uow.commit()
    metrics.ENROLLMENTS_STARTED.inc()
    _count(result)
    return enrollment


async def get_enrollment(uow: UnitOfWork, tenant: str, enrollment_id: uuid.UUID) -> Enrollment:
    async with uow:
        enrollment = await uow.enrollments.get(tenant, enrollment_id)
    if enrollment is None:
        raise NotFound("enrollment", enrollment_id)
    return enrollment


async def list_enrollments(
    uow: UnitOfWork,
    tenant: str,
    *,
    workflow_id: uuid.UUID | None = None,
    contact_id: uuid.UUID | None = None,
    limit: int = 100,
    offset: int = 0,
) -> Sequence[Enrollment]:
    async with uow:
        return await uow.enrollments.list(
            tenant, workflow_id=workflow_id, contact_id=contact_id, limit=limit, offset=offset
        )


async def actions_finished(
    uow: UnitOfWork,
    events: Sequence[ActionFinished],
    *,
    clock: Clock = utcnow,
    new_id: Callable[[], uuid.UUID] = uuid.uuid4,
) -> int:
    """Continue the enrollments whose awaited actions finished (completed, deleted, skipped,
    expired, failed), all in one transaction.

    The action is looked up by id in our own ``manual_actions`` (skipped/expired/failed events
    carry no enrollment id). Idempotent: an event id already in the inbox is skipped, and an event
    for an action the enrollment no longer waits on (duplicate, after its timeout fired, unknown)
    only notes the action's end on our record. Returns how many enrollments moved.
    """
    outcomes: list[tuple[ActionFinished, str, runner.RunResult | None]] = []
    async with uow:
        for event in events:
            outcomes.append((event, *await _action_finished(uow, event, clock(), new_id)))
        await uow.commit()
    for event, outcome, result in outcomes:
        metrics.FINISHED_EVENTS.labels(f"action_{event.kind.value}", outcome).inc()
        if result is not None:
            _count(result)
    return sum(1 for _, outcome, _ in outcomes if outcome == ADVANCED)


ADVANCED, REDELIVERED, NOT_WAITING, UNKNOWN = "advanced", "redelivered", "not_waiting", "unknown"


def _count(result: runner.RunResult) -> None:
    if result.action is not None:
        metrics.ACTIONS_QUEUED.labels(result.action.action_type.value).inc()
    if any(isinstance(e, runner.EnrollmentCompleted) for e in result.events):
        metrics.ENROLLMENTS_COMPLETED.inc()


async def _action_finished(
    uow: UnitOfWork, event: ActionFinished, now: datetime, new_id: Callable[[], uuid.UUID]
) -> tuple[str, runner.RunResult | None]:
    """Apply one event; returns what happened (ADVANCED, REDELIVERED, NOT_WAITING, UNKNOWN)."""
    if not await uow.first_time_seen(INBOX_CONSUMER, event.message_id):
        log.info("duplicate event ignored", extra={"message_id": str(event.message_id)})
        return REDELIVERED, None
    # Lock order everywhere: contact, enrollment, action (as enroll and a directory change that
    # reaches a goal do), so two transactions never wait on each other in a cycle.
    found = await uow.actions.get(event.tenant, event.action_id)
    if found is not None:
        await uow.contacts.get(event.tenant, found.contact_id, for_update=True, include_deleted=True)
    enrollment_id = found.enrollment_id if found is not None else event.enrollment_id
    enrollment = (
        await uow.enrollments.get(event.tenant, enrollment_id, for_update=True) if enrollment_id else None
    )
    action = await uow.actions.get(event.tenant, event.action_id, for_update=True)
    if (
        enrollment is None
        or action is None
        or action.enrollment_id != enrollment.id
        or (event.enrollment_id is not None and event.enrollment_id != enrollment.id)
    ):
        log.warning(
            "finished action ignored: unknown enrollment or action",
            extra={
                "tenant": event.tenant,
                "action_id": str(event.action_id),
                "enrollment_id": str(event.enrollment_id),
            },
        )
        return UNKNOWN, None
    if not runner.is_waiting_for(enrollment, action.id):
        if runner.record_finish(action, runner.FinishKind(event.kind), event.at, event.outcome):
            await uow.actions.save(action)
        log.info(
            "finished action ignored: enrollment is not waiting on it",
            extra={
                "tenant": event.tenant,
                "action_id": str(action.id),
                "enrollment_id": str(enrollment.id),
                "status": enrollment.status.value,
            },
        )
        return NOT_WAITING, None
    workflow = await uow.workflows.get(event.tenant, enrollment.workflow_id)
    version = workflow.version(enrollment.workflow_version) if workflow else None
    contact = await uow.contacts.get(
        event.tenant, enrollment.contact_id, for_update=True, include_deleted=True
    )
    if workflow is None or version is None or contact is None:
        raise RuntimeError(f"enrollment {enrollment.id} refers to missing rows")  # rows are never deleted
    ctx = await _run_context(uow, workflow, version, contact, now, new_id)
    result = runner.finish_action(
        enrollment, action, runner.FinishKind(event.kind), ctx, outcome=event.outcome, reason=event.reason
    )
    await uow.actions.save(action)
    await uow.enrollments.save(enrollment)
    await _apply(uow, workflow.id, ctx, result, causation_id=event.message_id)
    return ADVANCED, result


async def _run_context(
    uow: UnitOfWork,
    workflow: Workflow,
    version: WorkflowVersion,
    contact: Contact,
    now: datetime,
    new_id: Callable[[], uuid.UUID],
) -> runner.RunContext:
    steps = version.steps()
    wanted = {u for s in steps if isinstance(s, AssignUser) for u in s.user_ids}
    wanted |= {s.fallback_user_id for s in steps if isinstance(s, AssignUser) and s.fallback_user_id}
    if contact.owner_user_id is not None:
        wanted.add(contact.owner_user_id)
    users = await uow.users.get_many(workflow.tenant, wanted, include_deleted=True)
    positions = (
        await uow.round_robin.load(workflow.tenant, workflow.id, for_update=True)
        if any(isinstance(s, AssignUser) for s in steps)
        else {}
    )
    return runner.RunContext(
        workflow_name=workflow.name,
        version=version,
        contact=contact,
        users=users,
        round_robin=positions,
        now=now,
        new_id=new_id,
    )


async def _apply(
    uow: UnitOfWork,
    workflow_id: uuid.UUID,
    ctx: runner.RunContext,
    result: runner.RunResult,
    causation_id: uuid.UUID | None,
) -> None:
    """Persist what a run changed besides the enrollment, and stage its events."""
    if result.contact_changed:
        await uow.contacts.update(ctx.contact)
        await uow.publish(CONTACTS, contact_updated(ctx.contact, causation_id=causation_id))
        await uow.round_robin.save(ctx.contact.tenant, workflow_id, ctx.round_robin)
    action = result.action
    if action is not None:
        await uow.actions.add(action)
        await uow.publish(ACTION_LIFECYCLE, action_queued(action, causation_id=causation_id))
    await apply_effects(uow, result, ctx.now, causation_id=causation_id)


def action_queued(action: ManualAction, *, causation_id: uuid.UUID | None = None) -> Envelope[ActionQueued]:
    """The ActionQueued event for a newly queued action: subject = action id, sequence 1."""
    payload = ActionQueued(
        action_id=action.id,
        action_type=ContractActionType(action.action_type.value),
        action_name=action.action_name,
        workflow_id=action.workflow_id,
        workflow_version=action.workflow_version,
        workflow_name=action.workflow_name,
        step_id=action.step_id,
        enrollment_id=action.enrollment_id,
        contact=ContactSnapshot(
            contact_id=action.contact_id, name=action.contact_name, phone=action.contact_phone
        ),
        assignee_user_id=action.assignee_user_id,
        message=action.message,
        message_template=action.message_template,
        notes=action.notes,
        priority=action.priority,
        queued_at=action.created_at,
        due_at=action.due_at,
        expires_at=action.expires_at,
    )
    return Envelope.wrap(
        payload,
        source=SOURCE,
        tenant=action.tenant,
        subject=str(action.id),
        sequence=ACTION_QUEUED_SEQUENCE,
        causation_id=causation_id,
        time=action.created_at,
    )
