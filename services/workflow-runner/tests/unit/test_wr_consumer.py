"""The consumer's batch handler: which messages it acts on, with the real handlers and a fake unit of work."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from prometheus_client import REGISTRY
from wr_factories import TENANT, assign, call, sms
from wr_fakes import FakeUnitOfWork

from manual_actions.contracts import ActionCompleted, ActionDeleted, ActionType, Envelope, topics
from manual_actions.kafka import Delivered
from workflow_runner.domain.enrollments import EnrollmentStatus
from workflow_runner.domain.people import UserRole
from workflow_runner.domain.runner import FinishKind
from workflow_runner.entrypoints.consumer import batch_handler, to_command
from workflow_runner.handlers import handlers
from workflow_runner.handlers.commands import (
    CreateContact,
    CreateUser,
    CreateWorkflow,
    Enroll,
    PublishWorkflow,
)

NOW = datetime(2025, 1, 6, tzinfo=UTC)


def delivered(envelope: Envelope[object], offset: int = 0) -> Delivered:
    return Delivered(envelope=envelope, topic=topics.ACTION_LIFECYCLE, partition=0, offset=offset)


def completed(queued: Envelope[object]) -> Envelope[ActionCompleted]:
    data = queued.data
    payload = ActionCompleted(
        action_id=data.action_id,
        action_type=data.action_type,  # type: ignore[attr-defined]
        enrollment_id=data.enrollment_id,
        step_id=data.step_id,  # type: ignore[attr-defined]
        assignee_user_id=None,
        outcome="sent",
        completed_by=None,
        completed_at=NOW,
    )
    return Envelope.wrap(
        payload, source="action-queue", tenant=queued.tenant, subject=queued.subject, sequence=2
    )


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_only_completed_and_deleted_become_commands() -> None:
    action_id, enrollment_id = uuid.uuid4(), uuid.uuid4()
    deleted = Envelope.wrap(
        ActionDeleted(
            action_id=action_id,
            action_type=ActionType.CALL,
            enrollment_id=enrollment_id,
            step_id="c",
            assignee_user_id=None,
            deleted_by=None,
            deleted_at=NOW,
        ),
        source="action-queue",
        tenant=TENANT,
        subject=str(action_id),
        sequence=2,
    )
    command = to_command(delivered(deleted))
    assert command is not None
    assert (command.kind, command.action_id, command.enrollment_id, command.tenant, command.message_id) == (
        FinishKind.DELETED,
        action_id,
        enrollment_id,
        TENANT,
        deleted.id,
    )


async def test_batch_handler_continues_the_enrollment_and_skips_other_messages() -> None:
    uow = FakeUnitOfWork()
    ada = await handlers.create_user(uow, CreateUser(TENANT, "Ada", "+14155552671", UserRole.AGENT))
    grace = await handlers.create_contact(uow, CreateContact(TENANT, "Grace Hopper", "+14155550132"))
    workflow = await handlers.create_workflow(
        uow, CreateWorkflow(TENANT, "W", [assign("a", ada.id), sms("s"), call("c")])
    )
    await handlers.publish_workflow(uow, PublishWorkflow(TENANT, workflow.id))
    calls_before = metric("workflow_runner_actions_queued_total", type="call")
    enrollment = await handlers.enroll(uow, Enroll(TENANT, workflow.id, grace.id))
    [(_, queued)] = uow.published
    handle = batch_handler(lambda: uow)

    await handle([delivered(queued, 0)])  # our own ActionQueued read back: nothing to do
    assert len(uow.published) == 1 and uow.committed.inbox == set()

    event = completed(queued)
    await handle([delivered(event, 1), delivered(event, 2)])  # a redelivery within the same batch
    assert len(uow.published) == 2
    stored = await handlers.get_enrollment(uow, TENANT, enrollment.id)
    assert stored.status is EnrollmentStatus.WAITING and stored.current_step_id == "c"
    assert metric("workflow_runner_actions_queued_total", type="call") == calls_before + 1
    assert metric("workflow_runner_finished_events_total", type="action_completed", result="redelivered") >= 1


def test_intermediate_action_queue_transitions_are_passed_over() -> None:
    # action-queue publishes every transition (decision 0012); only the ones that end an action
    # concern the enrollment, and a reservation or a snooze must not be dead-lettered.
    from manual_actions.contracts.messages import ActionReserved, ActionSnoozed

    action_id, user = uuid.uuid4(), uuid.uuid4()
    common = {"action_id": action_id, "action_type": ActionType.SMS, "assignee_user_id": user}
    for sequence, payload in enumerate(
        [
            ActionReserved(**common, reserved_by=user, lease_expires_at=NOW, reserved_at=NOW),
            ActionSnoozed(**common, until=NOW, snoozed_by=user, snoozed_at=NOW),
        ],
        start=2,
    ):
        envelope = Envelope.wrap(
            payload, source="action-queue", tenant=TENANT, subject=str(action_id), sequence=sequence
        )
        assert to_command(delivered(envelope)) is None
