"""The enrollment runner state machine and round robin."""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from datetime import timedelta

import pytest
from wr_factories import T0, TENANT, assign, call, contact, published_workflow, sms, user

from workflow_runner.domain import runner
from workflow_runner.domain.enrollments import (
    ActionStatus,
    ActionType,
    Enrollment,
    EnrollmentStatus,
    HistoryEvent,
    ManualAction,
)
from workflow_runner.domain.people import Contact, User
from workflow_runner.domain.runner import FinishKind, RunContext
from workflow_runner.domain.workflows import Workflow


def make_ctx(
    workflow: Workflow,
    c: Contact,
    users: list[User],
    positions: dict[str, dict[str, int]] | None = None,
    *,
    minutes: int = 0,
) -> RunContext:
    counter = itertools.count(1)
    version = workflow.published
    assert version is not None
    return RunContext(
        workflow_name=workflow.name,
        version=version,
        contact=c,
        users={u.id: u for u in users},
        round_robin=positions if positions is not None else {},
        now=T0 + timedelta(minutes=minutes),
        new_id=lambda: uuid.UUID(int=next(counter) + 1000 * minutes),
    )


def enroll(workflow: Workflow, c: Contact) -> Enrollment:
    assert workflow.published is not None
    return Enrollment.start(
        tenant=TENANT,
        contact_id=c.id,
        workflow_id=workflow.id,
        workflow_version=workflow.published.number,
        now=T0,
    )


def test_run_stops_at_the_first_manual_step_with_a_rendered_action() -> None:
    ada = user(name="Ada Lovelace")
    workflow = published_workflow(assign("assign", ada.id), sms("sms1"), call("call1"), users=[ada])
    grace = contact(custom_fields={"plan": "gold"})
    enrollment = enroll(workflow, grace)
    ctx = make_ctx(workflow, grace, [ada])

    result = runner.start(enrollment, ctx)

    action = result.action
    assert action is not None
    assert (action.action_type, action.step_id, action.action_name) == (
        ActionType.SMS,
        "sms1",
        "Follow-up SMS",
    )
    assert action.message == "Hi Grace, Ada Lovelace here"
    assert action.assignee_user_id == ada.id and grace.owner_user_id == ada.id
    assert (action.contact_name, action.contact_phone) == ("Grace Hopper", "+14155550132")
    assert (action.workflow_name, action.workflow_version, action.status) == (
        "Onboarding",
        1,
        ActionStatus.QUEUED,
    )
    assert result.contact_changed
    assert enrollment.status is EnrollmentStatus.WAITING
    assert enrollment.current_step_id == "sms1" and enrollment.waiting_action_id == action.id
    assert [h.event for h in enrollment.history] == [
        HistoryEvent.ENROLLED,
        HistoryEvent.USER_ASSIGNED,
        HistoryEvent.ACTION_QUEUED,
    ]
    assert ctx.round_robin == {"assign": {str(ada.id): 0}}  # one user: score back to zero


def test_completed_action_moves_to_the_next_step_then_completes() -> None:
    ada = user()
    workflow = published_workflow(
        assign("assign", ada.id),
        sms("sms1"),
        call("call1", notes="Ask about {{contact.custom.plan}}"),
        users=[ada],
    )
    grace = contact(custom_fields={"plan": "gold"})
    enrollment = enroll(workflow, grace)
    first = runner.start(enrollment, make_ctx(workflow, grace, [ada])).action
    assert first is not None

    second = runner.finish_action(
        enrollment, first, FinishKind.COMPLETED, make_ctx(workflow, grace, [ada], minutes=5), outcome="sent"
    ).action
    assert first.status is ActionStatus.COMPLETED and first.outcome == "sent"
    assert second is not None and second.action_type is ActionType.CALL and second.step_id == "call1"
    assert second.notes == "Ask about gold" and second.message is None
    assert enrollment.status is EnrollmentStatus.WAITING and enrollment.waiting_action_id == second.id

    final = runner.finish_action(
        enrollment, second, FinishKind.DELETED, make_ctx(workflow, grace, [ada], minutes=9)
    )
    assert final.action is None
    assert any(isinstance(e, runner.EnrollmentCompleted) for e in final.events)
    assert second.status is ActionStatus.DELETED
    assert enrollment.status is EnrollmentStatus.COMPLETED
    assert enrollment.current_step_id is None and enrollment.waiting_action_id is None
    assert [(h.step_id, h.event) for h in enrollment.history] == [
        (None, HistoryEvent.ENROLLED),
        ("assign", HistoryEvent.USER_ASSIGNED),
        ("sms1", HistoryEvent.ACTION_QUEUED),
        ("sms1", HistoryEvent.ACTION_COMPLETED),
        ("call1", HistoryEvent.ACTION_QUEUED),
        ("call1", HistoryEvent.ACTION_DELETED),
        (None, HistoryEvent.COMPLETED),
    ]
    assert enrollment.history[3].detail == {"action_id": str(first.id), "outcome": "sent"}


def test_duplicate_and_stale_finishes_are_ignored() -> None:
    ada = user()
    workflow = published_workflow(sms("sms1"), call("call1"), users=[ada])
    grace = contact(owner_user_id=ada.id)
    enrollment = enroll(workflow, grace)
    first = runner.start(enrollment, make_ctx(workflow, grace, [ada])).action
    assert first is not None
    second = runner.finish_action(
        enrollment, first, FinishKind.COMPLETED, make_ctx(workflow, grace, [ada], minutes=1)
    ).action
    assert second is not None
    history_length = len(enrollment.history)

    again = runner.finish_action(
        enrollment, first, FinishKind.COMPLETED, make_ctx(workflow, grace, [ada], minutes=2)
    )
    assert again.events == [] and len(enrollment.history) == history_length
    assert enrollment.waiting_action_id == second.id

    stranger = ManualAction(**{**first.__dict__, "id": uuid.uuid4(), "status": ActionStatus.QUEUED})
    assert (
        runner.finish_action(
            enrollment, stranger, FinishKind.DELETED, make_ctx(workflow, grace, [ada], minutes=3)
        ).events
        == []
    )
    assert stranger.status is ActionStatus.QUEUED


def test_workflow_without_manual_steps_completes_at_once() -> None:
    ada = user()
    workflow = published_workflow(assign("assign", ada.id), users=[ada])
    grace = contact()
    enrollment = enroll(workflow, grace)
    result = runner.start(enrollment, make_ctx(workflow, grace, [ada]))
    assert result.action is None and enrollment.status is EnrollmentStatus.COMPLETED


def test_round_robin_across_enrollments_spreads_contacts_evenly() -> None:
    users = [user(name=f"Agent {i}") for i in range(3)]
    workflow = published_workflow(assign("assign", *(u.id for u in users)), sms("sms1"), users=users)
    positions: dict[str, int] = {}
    assignees = []
    for i in range(7):
        c = contact(name=f"Contact {i}")
        action = runner.start(enroll(workflow, c), make_ctx(workflow, c, users, positions)).action
        assert action is not None
        assignees.append(action.assignee_user_id)
    assert assignees[:3] == [u.id for u in users]
    assert assignees[3:6] == assignees[:3]
    assert Counter(assignees) == {users[0].id: 3, users[1].id: 2, users[2].id: 2}


def test_only_unassigned_keeps_an_existing_owner_and_does_not_advance_the_rotation() -> None:
    owner, a, b = user(name="Owner"), user(name="A"), user(name="B")
    workflow = published_workflow(
        assign("assign", a.id, b.id, only_unassigned=True), sms("sms1"), users=[owner, a, b]
    )
    positions: dict[str, int] = {}
    kept = contact(owner_user_id=owner.id)
    enrollment = enroll(workflow, kept)
    result = runner.start(enrollment, make_ctx(workflow, kept, [owner, a, b], positions))
    assert result.action is not None and result.action.assignee_user_id == owner.id
    assert not result.contact_changed and positions == {}
    assert enrollment.history[1].event is HistoryEvent.ASSIGNMENT_SKIPPED

    fresh = contact()
    result = runner.start(enroll(workflow, fresh), make_ctx(workflow, fresh, [owner, a, b], positions))
    assert result.action is not None and result.action.assignee_user_id == a.id


def test_without_only_unassigned_the_owner_is_replaced() -> None:
    owner, a = user(name="Owner"), user(name="A")
    workflow = published_workflow(assign("assign", a.id), sms("sms1"), users=[owner, a])
    c = contact(owner_user_id=owner.id)
    result = runner.start(enroll(workflow, c), make_ctx(workflow, c, [owner, a]))
    assert result.action is not None and result.action.assignee_user_id == a.id and c.owner_user_id == a.id


def test_no_assignee_and_no_phone_are_recorded_not_hidden() -> None:
    workflow = published_workflow(sms("sms1"), users=[])
    c = contact(phone=None)
    enrollment = enroll(workflow, c)
    action = runner.start(enrollment, make_ctx(workflow, c, [])).action
    assert action is not None and action.assignee_user_id is None and action.contact_phone is None
    assert action.message == "Hi Grace,  here"
    assert enrollment.history[-1].detail["warning"] == "the contact has no valid phone number"


def test_enrollment_is_pinned_to_its_version() -> None:
    ada = user()
    workflow = published_workflow(sms("sms1"), users=[ada])
    c = contact()
    enrollment = enroll(workflow, c)
    workflow.save_draft([call("call1")], T0)
    workflow.publish(set(), T0)
    with pytest.raises(Exception, match="pinned"):
        runner.start(enrollment, make_ctx(workflow, c, [ada]))
