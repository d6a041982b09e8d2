"""The real handlers driven with the in-memory unit of work."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from wr_factories import T0, TENANT, assign, call, sms
from wr_fakes import FakeUnitOfWork

from manual_actions.contracts import ActionQueued, ActionType, decode, encode
from manual_actions.contracts.topics import ACTION_LIFECYCLE
from workflow_runner.domain.enrollments import ActionStatus, EnrollmentStatus
from workflow_runner.domain.errors import (
    AlreadyEnrolled,
    InvalidField,
    NotFound,
    WorkflowInvalid,
    WorkflowNotPublished,
)
from workflow_runner.domain.people import UserRole
from workflow_runner.domain.runner import FinishKind
from workflow_runner.handlers import handlers
from workflow_runner.handlers.commands import (
    ActionFinished,
    CreateContact,
    CreateUser,
    CreateWorkflow,
    Enroll,
    PublishWorkflow,
    SaveDraft,
)


async def setup(
    uow: FakeUnitOfWork, *, publish: bool = True, tenant: str = TENANT
) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    ada = await handlers.create_user(uow, CreateUser(tenant, "Ada Lovelace", "+14155552671", UserRole.AGENT))
    grace = await handlers.create_contact(uow, CreateContact(tenant, "Grace Hopper", "+1 415 555 0132"))
    workflow = await handlers.create_workflow(
        uow, CreateWorkflow(tenant, "Onboarding", [assign("assign", ada.id), sms("sms1"), call("call1")])
    )
    if publish:
        await handlers.publish_workflow(uow, PublishWorkflow(tenant, workflow.id))
    return ada.id, grace.id, workflow.id


def finished(
    enrollment_id: uuid.UUID,
    action_id: uuid.UUID,
    kind: FinishKind = FinishKind.COMPLETED,
    message_id: uuid.UUID | None = None,
    step_id: str = "sms1",
) -> ActionFinished:
    return ActionFinished(
        message_id=message_id or uuid.uuid4(),
        tenant=TENANT,
        kind=kind,
        action_id=action_id,
        enrollment_id=enrollment_id,
        step_id=step_id,
        at=T0,
        outcome="sent",
    )


async def test_enroll_commits_enrollment_action_and_action_queued_together() -> None:
    uow = FakeUnitOfWork()
    ada, grace, workflow_id = await setup(uow)

    enrollment = await handlers.enroll(uow, Enroll(TENANT, workflow_id, grace))

    assert enrollment.status is EnrollmentStatus.WAITING and enrollment.current_step_id == "sms1"
    stored = uow.committed.enrollments[(TENANT, enrollment.id)]
    assert stored.waiting_action_id is not None
    action = uow.committed.actions[(TENANT, stored.waiting_action_id)]
    assert action.status is ActionStatus.QUEUED and action.assignee_user_id == ada
    assert uow.committed.contacts[(TENANT, grace)].owner_user_id == ada

    assert len(uow.published) == 1
    topic, envelope = uow.published[0]
    assert topic == ACTION_LIFECYCLE
    assert (envelope.type, envelope.sequence, envelope.subject, envelope.source, envelope.tenant) == (
        "ActionQueued",
        1,
        str(action.id),
        "workflow-runner",
        TENANT,
    )
    roundtrip = decode(encode(envelope))
    data = roundtrip.data
    assert isinstance(data, ActionQueued)
    assert data.action_type is ActionType.SMS and data.message == "Hi Grace, Ada Lovelace here"
    assert (data.workflow_id, data.workflow_version, data.workflow_name) == (workflow_id, 1, "Onboarding")
    assert (data.enrollment_id, data.step_id, data.assignee_user_id) == (enrollment.id, "sms1", ada)
    assert (data.contact.contact_id, data.contact.name, data.contact.phone) == (
        grace,
        "Grace Hopper",
        "+14155550132",
    )


async def test_enroll_refuses_an_unpublished_workflow_and_changes_nothing() -> None:
    uow = FakeUnitOfWork()
    _, grace, workflow_id = await setup(uow, publish=False)
    commits = uow.commits
    with pytest.raises(WorkflowNotPublished) as caught:
        await handlers.enroll(uow, Enroll(TENANT, workflow_id, grace))
    assert caught.value.workflow_id == workflow_id
    assert uow.commits == commits and uow.published == [] and uow.committed.enrollments == {}


async def test_enroll_twice_is_refused_while_running() -> None:
    uow = FakeUnitOfWork()
    _, grace, workflow_id = await setup(uow)
    first = await handlers.enroll(uow, Enroll(TENANT, workflow_id, grace))
    with pytest.raises(AlreadyEnrolled) as caught:
        await handlers.enroll(uow, Enroll(TENANT, workflow_id, grace))
    assert caught.value.enrollment_id == first.id
    assert len(uow.published) == 1


async def test_other_tenants_entities_are_not_found() -> None:
    uow = FakeUnitOfWork()
    _, grace, workflow_id = await setup(uow)
    _, other_contact, other_workflow = await setup(uow, tenant="globex")
    with pytest.raises(NotFound, match="workflow"):
        await handlers.enroll(uow, Enroll(TENANT, other_workflow, grace))
    with pytest.raises(NotFound, match="contact"):
        await handlers.enroll(uow, Enroll(TENANT, workflow_id, other_contact))
    with pytest.raises(NotFound):
        await handlers.get_contact(uow, TENANT, other_contact)


async def test_publish_checks_users_of_this_tenant_only() -> None:
    uow = FakeUnitOfWork()
    stranger = await handlers.create_user(uow, CreateUser("globex", "Eve", "+14155552671", UserRole.AGENT))
    workflow = await handlers.create_workflow(
        uow, CreateWorkflow(TENANT, "W", [assign("a", stranger.id), sms("s")])
    )
    with pytest.raises(WorkflowInvalid) as caught:
        await handlers.publish_workflow(uow, PublishWorkflow(TENANT, workflow.id))
    assert [p.field for p in caught.value.problems] == ["steps[0].user_ids[0]"]
    stored = uow.committed.workflows[(TENANT, workflow.id)]
    assert stored.published is None


async def test_contact_owner_must_exist() -> None:
    uow = FakeUnitOfWork()
    with pytest.raises(InvalidField) as caught:
        await handlers.create_contact(uow, CreateContact(TENANT, "Grace", None, owner_user_id=uuid.uuid4()))
    assert caught.value.field == "owner_user_id"


async def test_finished_action_advances_once_and_duplicates_have_no_effect() -> None:
    uow = FakeUnitOfWork()
    _, grace, workflow_id = await setup(uow)
    enrollment = await handlers.enroll(uow, Enroll(TENANT, workflow_id, grace))
    sms_action = uow.published[0][1].data.action_id
    event = finished(enrollment.id, sms_action)

    assert await handlers.actions_finished(uow, [event], clock=lambda: T0 + timedelta(minutes=1)) == 1
    assert len(uow.published) == 2
    queued = uow.published[1][1]
    assert queued.data.action_type is ActionType.CALL and queued.data.step_id == "call1"
    assert queued.causation_id == event.message_id and queued.sequence == 1
    assert uow.committed.actions[(TENANT, sms_action)].status is ActionStatus.COMPLETED

    # same event again, and a different event about the same (already finished) action
    assert await handlers.actions_finished(uow, [event, finished(enrollment.id, sms_action)]) == 0
    assert len(uow.published) == 2

    stored = await handlers.get_enrollment(uow, TENANT, enrollment.id)
    assert stored.current_step_id == "call1" and stored.status is EnrollmentStatus.WAITING

    deleted = finished(enrollment.id, queued.data.action_id, FinishKind.DELETED, step_id="call1")
    assert await handlers.actions_finished(uow, [deleted]) == 1
    done = await handlers.get_enrollment(uow, TENANT, enrollment.id)
    assert done.status is EnrollmentStatus.COMPLETED and done.current_step_id is None
    assert [h.event.value for h in done.history][-2:] == ["action_deleted", "completed"]
    assert len(uow.published) == 2


async def test_events_for_another_tenant_or_unknown_actions_are_ignored() -> None:
    uow = FakeUnitOfWork()
    _, grace, workflow_id = await setup(uow)
    enrollment = await handlers.enroll(uow, Enroll(TENANT, workflow_id, grace))
    sms_action = uow.published[0][1].data.action_id
    wrong_tenant = ActionFinished(
        uuid.uuid4(), "globex", FinishKind.COMPLETED, sms_action, enrollment.id, "sms1", T0
    )
    unknown = finished(enrollment.id, uuid.uuid4())
    assert await handlers.actions_finished(uow, [wrong_tenant, unknown]) == 0
    assert len(uow.published) == 1


async def test_a_batch_is_one_transaction() -> None:
    """If one event of a batch fails, nothing of the batch is committed (the consumer retries)."""
    uow = FakeUnitOfWork()
    _, grace, workflow_id = await setup(uow)
    enrollment = await handlers.enroll(uow, Enroll(TENANT, workflow_id, grace))
    sms_action = uow.published[0][1].data.action_id
    good = finished(enrollment.id, sms_action)

    def broken_ids() -> uuid.UUID:  # fails after the inbox row and the first changes were made
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await handlers.actions_finished(uow, [good], new_id=broken_ids)
    assert len(uow.published) == 1 and uow.committed.inbox == set()
    assert await handlers.actions_finished(uow, [good]) == 1


async def test_round_robin_position_survives_between_enrollments() -> None:
    uow = FakeUnitOfWork()
    a = await handlers.create_user(uow, CreateUser(TENANT, "A", "+14155552671", UserRole.AGENT))
    b = await handlers.create_user(uow, CreateUser(TENANT, "B", "+14155552672", UserRole.AGENT))
    workflow = await handlers.create_workflow(
        uow, CreateWorkflow(TENANT, "RR", [assign("rr", a.id, b.id), sms("s")])
    )
    await handlers.publish_workflow(uow, PublishWorkflow(TENANT, workflow.id))
    for i in range(4):
        c = await handlers.create_contact(uow, CreateContact(TENANT, f"C {i}", None))
        await handlers.enroll(uow, Enroll(TENANT, workflow.id, c.id))
    assert [env.data.assignee_user_id for _, env in uow.published] == [a.id, b.id, a.id, b.id]


async def test_editing_after_publish_keeps_running_enrollments_on_their_version() -> None:
    uow = FakeUnitOfWork()
    _, grace, workflow_id = await setup(uow)
    enrollment = await handlers.enroll(uow, Enroll(TENANT, workflow_id, grace))
    await handlers.save_draft(
        uow, SaveDraft(TENANT, workflow_id, [sms("only", message="v2")], name="Renamed")
    )
    await handlers.publish_workflow(uow, PublishWorkflow(TENANT, workflow_id))
    sms_action = uow.published[0][1].data.action_id
    await handlers.actions_finished(uow, [finished(enrollment.id, sms_action)])
    queued = uow.published[-1][1].data
    assert (queued.step_id, queued.workflow_version) == ("call1", 1)
    workflow = await handlers.get_workflow(uow, TENANT, workflow_id)
    assert [v.number for v in workflow.versions] == [1, 2] and workflow.name == "Renamed"
