"""Workflow versions: drafts hold anything, publishing lists every problem, published is frozen."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
from wr_factories import T0, TENANT, assign, call, sms, user

from workflow_runner.domain.errors import WorkflowInvalid
from workflow_runner.domain.steps import AssignUser, ManualCall, ManualSms
from workflow_runner.domain.workflows import VersionStatus, Workflow


def test_publish_reports_every_problem_at_once() -> None:
    ada = user()
    ghost = uuid.uuid4()
    workflow = Workflow.create(
        tenant=TENANT,
        name="Broken",
        steps=[
            assign("assign", ada.id, ghost),
            {"id": "wait", "type": "wait_days", "days": 2},
            sms("sms1", message="   "),
            sms("sms2", message="Hi {{contact.nickname}} from {{ __import__('os') }}"),
            call("call1", action_name=""),
            sms("sms1"),
            {"id": "x", "type": "manual_sms", "action_name": "A", "message": "ok", "mesage": "typo"},
        ],
        now=T0,
    )
    with pytest.raises(WorkflowInvalid) as caught:
        workflow.publish({ada.id}, T0)
    fields = [p.field for p in caught.value.problems]
    assert fields == [
        "steps[0].user_ids[1]",  # missing user
        "steps[1].type",  # unknown step type
        "steps[2].message",  # empty message
        "steps[3].message",  # unknown merge field
        "steps[3].message",  # code injection attempt
        "steps[4].action_name",  # empty action name
        "steps[5].id",  # duplicate step id
        "steps[6].mesage",  # unknown field (typo)
    ]
    messages = " | ".join(p.message for p in caught.value.problems)
    assert str(ghost) in messages
    assert "wait_days" in messages
    assert "contact.nickname" in messages
    assert workflow.draft is not None and workflow.published is None


def test_an_empty_workflow_cannot_be_published() -> None:
    workflow = Workflow.create(tenant=TENANT, name="Empty", steps=[], now=T0)
    with pytest.raises(WorkflowInvalid) as caught:
        workflow.publish(set(), T0)
    assert [p.field for p in caught.value.problems] == ["steps"]


def test_structural_mistakes_are_reported() -> None:
    workflow = Workflow.create(
        tenant=TENANT,
        name="Odd",
        steps=[
            "not an object",  # type: ignore[list-item]
            {"type": "manual_call", "action_name": "Call"},
            {"id": "a", "type": "assign_user", "user_ids": [], "only_unassigned": "yes"},
            {"id": "b", "type": "assign_user", "user_ids": ["not-a-uuid"]},
            {"id": "c", "action_name": "No type"},
        ],
        now=T0,
    )
    with pytest.raises(WorkflowInvalid) as caught:
        workflow.publish(set(), T0)
    assert [p.field for p in caught.value.problems] == [
        "steps[0]",
        "steps[1].id",
        "steps[2].only_unassigned",
        "steps[2].user_ids",
        "steps[3].user_ids[0]",
        "steps[4].type",
    ]


def test_published_version_has_typed_steps() -> None:
    ada, bob = user(), user(name="Bob")
    workflow = Workflow.create(
        tenant=TENANT,
        name="Good",
        steps=[
            assign("assign", ada.id, bob.id, only_unassigned=True),
            sms("sms1"),
            call("call1", notes="Ask"),
        ],
        now=T0,
    )
    version = workflow.publish({ada.id, bob.id}, T0)
    assert version.status is VersionStatus.PUBLISHED and version.number == 1
    steps = version.steps()
    assert (
        isinstance(steps[0], AssignUser)
        and steps[0].user_ids == (ada.id, bob.id)
        and steps[0].only_unassigned
    )
    assert isinstance(steps[1], ManualSms) and steps[1].action_name == "Follow-up SMS"
    assert isinstance(steps[2], ManualCall) and steps[2].notes is not None


def test_published_version_is_immutable_and_edits_start_a_new_draft() -> None:
    ada = user()
    specs = [assign("assign", ada.id), sms("sms1")]
    workflow = Workflow.create(tenant=TENANT, name="W", steps=specs, now=T0)
    v1 = workflow.publish({ada.id}, T0)

    with pytest.raises(dataclasses.FrozenInstanceError):
        v1.status = VersionStatus.DRAFT  # type: ignore[misc]
    v1.step_specs[1]["message"] = "tampered"  # a copy: the version is unchanged
    assert v1.step_specs[1]["message"] == specs[1]["message"]

    v2 = workflow.save_draft([sms("sms1", message="New text")], T0)
    assert (v2.number, v2.status) == (2, VersionStatus.DRAFT)
    assert workflow.version(1) == v1
    assert workflow.published == v1

    workflow.save_draft([sms("sms1", message="Newer text")], T0)
    assert len(workflow.versions) == 2
    workflow.publish({ada.id}, T0)
    assert workflow.published is not None and workflow.published.number == 2
    assert workflow.version(1) == v1


def test_publishing_twice_is_harmless() -> None:
    ada = user()
    workflow = Workflow.create(tenant=TENANT, name="W", steps=[sms("s")], now=T0)
    first = workflow.publish({ada.id}, T0)
    assert workflow.publish(set(), T0) == first
    assert len(workflow.versions) == 1


def test_draft_cannot_run() -> None:
    workflow = Workflow.create(tenant=TENANT, name="W", steps=[sms("s")], now=T0)
    with pytest.raises(Exception, match="draft"):
        workflow.latest.steps()
