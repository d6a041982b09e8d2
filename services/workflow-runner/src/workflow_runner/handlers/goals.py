"""Goals: a contact's reply, opt-out or do-not-disturb ends their running enrollments in the
workflows whose published version lists that goal (decision 0013), and the effects every run
shares (timers to store, actions to cancel).

These functions run inside the caller's unit of work, so the contact change that reached the goal,
the stopped enrollments and their CancelAction commands commit together.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Sequence
from datetime import datetime

from manual_actions.contracts import CancelAction, Envelope
from manual_actions.contracts.topics import ACTION_COMMANDS
from workflow_runner.domain import runner
from workflow_runner.domain.directory import Channel
from workflow_runner.domain.people import Contact
from workflow_runner.domain.workflows import Goal, WorkflowVersion
from workflow_runner.handlers.ports import UnitOfWork

SOURCE = "workflow-runner"
MAX_RUNNING_PER_CONTACT = 1000  # one per workflow at most; far above any tenant's workflow count

log = logging.getLogger(__name__)


async def apply_effects(
    uow: UnitOfWork, result: runner.RunResult, now: datetime, *, causation_id: uuid.UUID | None
) -> None:
    """Store the run's new timers and stage a CancelAction for each action it gave up on."""
    if result.timers:
        await uow.timers.add_many(result.timers)
    for cancel in result.cancellations:
        await uow.publish(ACTION_COMMANDS, cancel_action(cancel, now, causation_id=causation_id))


def cancel_action(
    cancel: runner.CancelRequested, now: datetime, *, causation_id: uuid.UUID | None = None
) -> Envelope[CancelAction]:
    """The CancelAction command for action-queue: subject = action id (the topic's key)."""
    payload = CancelAction(
        command_id=uuid.uuid4(),
        action_id=cancel.action_id,
        enrollment_id=cancel.enrollment_id,
        reason=cancel.reason[:200],
        requested_at=now,
    )
    return Envelope.wrap(
        payload,
        source=SOURCE,
        tenant=cancel.tenant,
        subject=str(cancel.action_id),
        sequence=1,
        causation_id=causation_id,
        time=now,
    )


def goals_reached(before: Contact | None, after: Contact) -> set[Goal]:
    """Goals a contact change reaches: a channel newly opted out, or newly paused (DND)."""
    reached: set[Goal] = set()
    for channel in Channel:
        if after.opted_out.get(channel) and not (before is not None and before.opted_out.get(channel)):
            reached.add(Goal.OPTED_OUT)
        if after.do_not_disturb.get(channel) and not (
            before is not None and before.do_not_disturb.get(channel)
        ):
            reached.add(Goal.DO_NOT_DISTURB)
    return reached


async def stop_for_goals(
    uow: UnitOfWork,
    tenant: str,
    contact_id: uuid.UUID,
    goals: Collection[Goal],
    now: datetime,
    *,
    reason: str,
    causation_id: uuid.UUID | None = None,
) -> list[uuid.UUID]:
    """Stop the contact's running enrollments whose pinned version lists one of ``goals``; their
    awaited actions get a CancelAction. Returns the stopped enrollments' ids."""
    if not goals:
        return []
    # Contact before enrollments: the lock order of every writer (a no-op when the caller holds it).
    await uow.contacts.get(tenant, contact_id, for_update=True, include_deleted=True)
    running = [
        e
        for e in await uow.enrollments.list(
            tenant, contact_id=contact_id, limit=MAX_RUNNING_PER_CONTACT, offset=0
        )
        if e.is_running
    ]
    stopped: list[uuid.UUID] = []
    versions: dict[tuple[uuid.UUID, int], WorkflowVersion | None] = {}
    for candidate in running:
        key = (candidate.workflow_id, candidate.workflow_version)
        if key not in versions:
            workflow = await uow.workflows.get(tenant, candidate.workflow_id)
            versions[key] = workflow.version(candidate.workflow_version) if workflow else None
        version = versions[key]
        matched = [g for g in goals if version is not None and g.value in version.goals]
        if not matched:
            continue
        enrollment = await uow.enrollments.get(tenant, candidate.id, for_update=True)
        if enrollment is None or not enrollment.is_running:
            continue
        result = runner.stop(enrollment, now, reason=reason, goal=matched[0].value)
        await uow.enrollments.save(enrollment)
        await apply_effects(uow, result, now, causation_id=causation_id)
        stopped.append(enrollment.id)
    if stopped:
        log.info(
            "enrollments stopped by a goal",
            extra={"tenant": tenant, "contact_id": str(contact_id), "count": len(stopped), "reason": reason},
        )
    return stopped


async def stop_for_imported(uow: UnitOfWork, tenant: str, stored: Sequence[Contact], now: datetime) -> int:
    """After an import: contacts that existed before (version > 1) and are now opted out or paused
    on a channel reach those goals. One query finds which of them have running enrollments, so a
    large import costs per affected contact, not per row. Returns how many enrollments stopped."""
    flagged = {c.id: goals_reached(None, c) for c in stored if c.version > 1}
    flagged = {contact_id: reached for contact_id, reached in flagged.items() if reached}
    if not flagged:
        return 0
    running = await uow.enrollments.running_contact_ids(tenant, flagged.keys())
    stopped = 0
    for contact_id in sorted(running):
        stopped += len(
            await stop_for_goals(
                uow,
                tenant,
                contact_id,
                sorted(flagged[contact_id]),
                now,
                reason="the contact was opted out or paused by an import",
            )
        )
    return stopped
