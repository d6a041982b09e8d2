"""The step graph against the real PostgreSQL and Kafka: Wait (durable timer fired by the service's
timer loop), Branch on every outcome event action-queue publishes, Timeout (cancel and keep, and a
late action event after the timeout), goals (a reply produced to the real sms-inbound topic, an
opt-out keyword, an opt-out through the directory API), publish validation and roles."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from sqlalchemy import select
from wr_harness import Harness, action_completed, action_deleted, eventually

from devstack.testing import recording
from manual_actions.auth import Role
from manual_actions.contracts import Envelope, topics
from manual_actions.contracts.messages import (
    ActionExpired,
    ActionFailed,
    ActionSkipped,
    ActionType,
    SmsReceived,
)
from workflow_runner.adapters import tables
from workflow_runner.adapters.sql import SqlUnitOfWork

pytestmark = pytest.mark.integration


class Commands:
    """Every record on the action-commands topic (CancelAction) since the beginning."""

    def __init__(self) -> None:
        self.records: list[ConsumerRecord[bytes, bytes]] = []

    def cancels_for(self, action_id: str) -> list[dict[str, Any]]:
        found = []
        for r in self.records:
            if r.value is None:
                continue
            doc = json.loads(r.value)
            if doc.get("type") == "CancelAction" and doc["data"]["action_id"] == action_id:
                found.append(doc)
        return found


@pytest.fixture(scope="module")
async def commands(wr: Harness) -> AsyncIterator[Commands]:
    async with recording(wr.bootstrap, topics.ACTION_COMMANDS) as records:
        recorder = Commands()
        recorder.records = records
        yield recorder


async def _tenant(wr: Harness) -> tuple[str, Any]:
    tenant = await wr.new_tenant()
    return tenant, wr.client(await wr.token(tenant, Role.ADMIN))


_phones = iter(range(1000, 9999))


async def _contact(admin: Any, **extra: Any) -> dict[str, Any]:
    created = await admin.post(
        "/v1/contacts", json={"name": "Grace Hopper", "phone": f"+1415555{next(_phones):04d}", **extra}
    )
    assert created.status_code == 201, created.text
    return dict(created.json())


async def _workflow(admin: Any, steps: list[dict[str, Any]], goals: list[str] | None = None) -> str:
    body: dict[str, Any] = {"name": "Graph", "steps": steps}
    if goals is not None:
        body["goals"] = goals
    created = await admin.post("/v1/workflows", json=body)
    assert created.status_code == 201, created.text
    published = await admin.post(f"/v1/workflows/{created.json()['id']}/publish")
    assert published.status_code == 200, published.text
    assert published.json()["goals"] == (goals or [])
    return str(created.json()["id"])


async def _enroll(admin: Any, workflow_id: str, contact_id: str) -> dict[str, Any]:
    response = await admin.post(f"/v1/workflows/{workflow_id}/enrollments", json={"contact_id": contact_id})
    assert response.status_code == 201, response.text
    return dict(response.json())


async def _queued(wr: Harness, enrollment_id: str, count: int) -> list[dict[str, Any]]:
    records = await eventually(
        lambda: len(wr.recorder.queued_for(enrollment_id)) >= count and wr.recorder.queued_for(enrollment_id),
        what=f"{count} ActionQueued for enrollment {enrollment_id}",
    )
    return [json.loads(r.value) for r in records]


def _lifecycle(queued: dict[str, Any], kind: str) -> Envelope[Any]:
    """ActionSkipped/ActionExpired/ActionFailed as action-queue publishes them (no enrollment id)."""
    data = queued["data"]
    common = {
        "action_id": uuid.UUID(data["action_id"]),
        "action_type": ActionType(data["action_type"]),
        "assignee_user_id": None,
    }
    now = datetime.now(UTC)
    payload: Any
    if kind == "skipped":
        payload = ActionSkipped(**common, reason="contact opted out of SMS", skipped_by=None, skipped_at=now)
    elif kind == "expired":
        payload = ActionExpired(**common, expired_at=now)
    else:
        payload = ActionFailed(
            **common, reason="carrier rejected the message", error_code=30007, failed_at=now
        )
    return Envelope.wrap(
        payload, source="action-queue", tenant=queued["tenant"], subject=data["action_id"], sequence=5
    )


async def _sms_in(wr: Harness, tenant: str, phone: str, body: str, keyword: str | None = None) -> Any:
    envelope = Envelope.wrap(
        SmsReceived(
            message_sid="SM" + uuid.uuid4().hex,
            from_phone=phone,
            to_phone="+15005550006",
            body=body,
            keyword=keyword,
            received_at=datetime.now(UTC),
        ),
        source="sms-sender",
        tenant=tenant,
        subject=phone,
        sequence=1,
    )
    return await wr.producer.send_and_wait(
        topics.SMS_INBOUND, envelope.to_json_bytes(), key=phone.encode(), headers=envelope.kafka_headers()
    )


async def _state(admin: Any, enrollment_id: str) -> dict[str, Any]:
    response = await admin.get(f"/v1/enrollments/{enrollment_id}")
    assert response.status_code == 200
    return dict(response.json())


# --- wait -------------------------------------------------------------------------------------------


async def test_wait_step_fires_from_a_durable_timer(wr: Harness) -> None:
    tenant, admin = await _tenant(wr)
    workflow_id = await _workflow(
        admin,
        [
            {"id": "pause", "type": "wait", "duration": "PT1S"},
            {"id": "sms1", "type": "manual_sms", "action_name": "After the pause", "message": "Hi"},
        ],
    )
    contact = await _contact(admin)
    enrollment = await _enroll(admin, workflow_id, contact["id"])
    assert (enrollment["status"], enrollment["current_step_id"]) == ("waiting", "pause")
    assert enrollment["waiting_action_id"] is None
    t = tables.timers.c
    async with SqlUnitOfWork(wr.service.engine) as uow:
        rows = (
            (await uow.connection.execute(select(tables.timers).where(t.tenant_id == tenant)))
            .mappings()
            .all()
        )
    assert [(r["kind"], r["step_id"], str(r["enrollment_id"])) for r in rows] == [
        ("wait", "pause", enrollment["id"])
    ]

    [queued] = await _queued(wr, enrollment["id"], 1)
    assert queued["data"]["step_id"] == "sms1" and queued["data"]["message_template"] == "Hi"
    state = await _state(admin, enrollment["id"])
    assert [(h["step_id"], h["event"]) for h in state["history"]] == [
        (None, "enrolled"),
        ("pause", "wait_started"),
        ("pause", "wait_ended"),
        ("sms1", "action_queued"),
    ]
    async with SqlUnitOfWork(wr.service.engine) as uow:
        fired = await uow.connection.scalar(select(t.fired_at).where(t.tenant_id == tenant))
    assert fired is not None


# --- branch on every outcome ----------------------------------------------------------------------

CASES: list[tuple[str, str, str]] = [
    # (first step type, event to produce, expected branch key)
    ("manual_sms", "completed:sent", "sms_sent"),
    ("manual_call", "completed:connected", "connected"),
    ("manual_call", "completed:no_answer", "no_answer"),
    ("manual_call", "completed:voicemail", "voicemail"),
    ("manual_call", "completed:busy", "busy"),
    ("manual_call", "completed:left_message", "left_message"),  # a tenant's custom outcome
    ("manual_sms", "skipped", "skipped"),
    ("manual_sms", "expired", "expired"),
    ("manual_sms", "failed", "failed"),
    ("manual_call", "deleted", "deleted"),
]


async def test_branch_follows_each_outcome_event_from_the_broker(wr: Harness) -> None:
    _, admin = await _tenant(wr)
    keys = sorted({expected for _, _, expected in CASES})
    targets = [
        {"id": f"to_{key}", "type": "manual_call", "action_name": f"After {key}", "next": "end"}
        for key in [*keys, "default"]
    ]
    workflows = {}
    for first_type in ("manual_sms", "manual_call"):
        first: dict[str, Any] = {"id": "first", "type": first_type, "action_name": "First touch"}
        if first_type == "manual_sms":
            first["message"] = "Hello {{contact.first_name}}"
        branch = {
            "id": "route",
            "type": "branch",
            "on": {k: f"to_{k}" for k in keys} | {"default": "to_default"},
        }
        workflows[first_type] = await _workflow(admin, [first, branch, *targets])

    sent = []
    expected_step = {}
    for first_type, event, expected in CASES:
        contact = await _contact(admin)
        enrollment = await _enroll(admin, workflows[first_type], contact["id"])
        [queued] = await _queued(wr, enrollment["id"], 1)
        if event.startswith("completed:"):
            envelope = action_completed(queued, outcome=event.split(":", 1)[1])
        elif event == "deleted":
            envelope = action_deleted(queued)
        else:
            envelope = _lifecycle(queued, event)
        sent.append(await wr.produce(envelope))
        expected_step[enrollment["id"]] = f"to_{expected}"
    await wr.wait_consumed(*sent)
    for enrollment_id, step in expected_step.items():
        queued = await _queued(wr, enrollment_id, 2)
        assert queued[1]["data"]["step_id"] == step, (enrollment_id, queued[1]["data"]["step_id"])
        state = await _state(admin, enrollment_id)
        taken = [h for h in state["history"] if h["event"] == "branch_taken"]
        assert taken and taken[0]["detail"]["to"] == step
        assert state["current_step_id"] == step


# --- timeouts -----------------------------------------------------------------------------------------


async def _timeout_workflow(admin: Any, action: str) -> str:
    return await _workflow(
        admin,
        [
            {
                "id": "call1",
                "type": "manual_call",
                "action_name": "Call before it is too late",
                "timeout": {"after": "PT1S", "then": "route", "action": action},
            },
            {"id": "route", "type": "branch", "on": {"timed_out": "sms_late", "default": "end"}},
            {"id": "sms_late", "type": "manual_sms", "action_name": "Late", "message": "Sorry we missed you"},
        ],
    )


async def test_timeout_cancel_cancels_the_action_and_a_late_finish_changes_nothing(
    wr: Harness, commands: Commands
) -> None:
    _, admin = await _tenant(wr)
    workflow_id = await _timeout_workflow(admin, "cancel")
    enrollment = await _enroll(admin, workflow_id, (await _contact(admin))["id"])
    queued = await _queued(wr, enrollment["id"], 2)
    first, late = queued
    assert (first["data"]["step_id"], late["data"]["step_id"]) == ("call1", "sms_late")
    [cancel] = await eventually(
        lambda: commands.cancels_for(first["data"]["action_id"]),
        what="the CancelAction of the timed-out call",
    )
    assert cancel["data"]["enrollment_id"] == enrollment["id"]
    assert cancel["subject"] == first["data"]["action_id"] and "timed out" in cancel["data"]["reason"]
    state = await _state(admin, enrollment["id"])
    events = [(h["step_id"], h["event"]) for h in state["history"]]
    assert events[-3:] == [("call1", "timed_out"), ("route", "branch_taken"), ("sms_late", "action_queued")]
    assert state["last_outcome"] == "timed_out"

    # The call is finished after all (a late event): the enrollment does not move a second time.
    late_event = await wr.produce(action_completed(first, outcome="connected"))
    await wr.wait_consumed(late_event)
    await asyncio.sleep(0.3)
    assert len(wr.recorder.queued_for(enrollment["id"])) == 2
    after = await _state(admin, enrollment["id"])
    assert after["history"] == state["history"] and after["waiting_action_id"] == late["data"]["action_id"]
    async with SqlUnitOfWork(wr.service.engine) as uow:
        recorded = await uow.actions.get(first["tenant"], uuid.UUID(first["data"]["action_id"]))
    assert recorded is not None and (recorded.status.value, recorded.outcome) == ("completed", "connected")


async def test_timeout_keep_leaves_the_action_queued(wr: Harness, commands: Commands) -> None:
    _, admin = await _tenant(wr)
    workflow_id = await _timeout_workflow(admin, "keep")
    enrollment = await _enroll(admin, workflow_id, (await _contact(admin))["id"])
    first, late = await _queued(wr, enrollment["id"], 2)
    assert late["data"]["step_id"] == "sms_late"
    state = await _state(admin, enrollment["id"])
    timed_out = next(h for h in state["history"] if h["event"] == "timed_out")
    assert timed_out["detail"]["action"] == "keep"
    await asyncio.sleep(0.5)
    assert commands.cancels_for(first["data"]["action_id"]) == []


# --- goals --------------------------------------------------------------------------------------------


async def test_reply_on_the_real_topic_stops_enrollments_whose_goals_include_it(
    wr: Harness, commands: Commands
) -> None:
    tenant, admin = await _tenant(wr)
    steps = [{"id": "call1", "type": "manual_call", "action_name": "Call"}]
    with_goal = await _workflow(admin, steps, goals=["replied"])
    without_goal = await _workflow(admin, steps)
    contact = await _contact(admin)
    stopping = await _enroll(admin, with_goal, contact["id"])
    staying = await _enroll(admin, without_goal, contact["id"])
    [awaited] = await _queued(wr, stopping["id"], 1)
    # Another tenant's contact with the same number is not touched by this tenant's reply.
    _, other_admin = await _tenant(wr)
    other_workflow = await _workflow(other_admin, steps, goals=["replied"])
    twin = await other_admin.post("/v1/contacts", json={"name": "Twin", "phone": contact["phone"]})
    other = await _enroll(other_admin, other_workflow, twin.json()["id"])

    await _sms_in(wr, tenant, contact["phone"], "Yes, call me tomorrow")
    state = await eventually(
        lambda: _stopped(admin, stopping["id"]), what="the enrollment stopped by the reply"
    )
    assert [h["event"] for h in state["history"][-2:]] == ["goal_reached", "stopped"]
    assert state["history"][-2]["detail"]["goal"] == "replied"
    [cancel] = await eventually(
        lambda: commands.cancels_for(awaited["data"]["action_id"]), what="CancelAction of the awaited call"
    )
    assert cancel["tenant"] == tenant
    assert (await _state(admin, staying["id"]))["status"] == "waiting"
    assert (await _state(other_admin, other["id"]))["status"] == "waiting"


async def _stopped(admin: Any, enrollment_id: str) -> dict[str, Any] | None:
    state = await _state(admin, enrollment_id)
    return state if state["status"] == "stopped" else None


async def test_opt_out_keyword_sets_the_opt_out_and_reaches_the_goal(wr: Harness) -> None:
    tenant, admin = await _tenant(wr)
    workflow_id = await _workflow(
        admin,
        [{"id": "sms1", "type": "manual_sms", "action_name": "Hi", "message": "Hi"}],
        goals=["opted_out"],
    )
    contact = await _contact(admin)
    enrollment = await _enroll(admin, workflow_id, contact["id"])
    await _sms_in(wr, tenant, contact["phone"], "STOP", keyword="opt_out")
    await eventually(lambda: _stopped(admin, enrollment["id"]), what="the enrollment stopped by STOP")
    updated = (await admin.get(f"/v1/contacts/{contact['id']}")).json()
    assert updated["opted_out"]["sms"] is True

    await _sms_in(wr, tenant, contact["phone"], "START", keyword="opt_in")

    async def opted_in() -> bool:
        return (await admin.get(f"/v1/contacts/{contact['id']}")).json()["opted_out"]["sms"] is False

    await eventually(opted_in, what="the opt-in keyword clearing the SMS opt-out")


async def test_opt_out_through_the_directory_api_stops_in_the_same_request(
    wr: Harness, commands: Commands
) -> None:
    _, admin = await _tenant(wr)
    steps = [{"id": "call1", "type": "manual_call", "action_name": "Call"}]
    workflow_id = await _workflow(admin, steps, goals=["opted_out", "do_not_disturb"])
    contact = await _contact(admin)
    enrollment = await _enroll(admin, workflow_id, contact["id"])
    [awaited] = await _queued(wr, enrollment["id"], 1)
    patched = await admin.patch(f"/v1/contacts/{contact['id']}", json={"opted_out": {"call": True}})
    assert patched.status_code == 200, patched.text
    state = await _state(admin, enrollment["id"])
    assert state["status"] == "stopped"
    assert state["history"][-2]["detail"] == {
        "goal": "opted_out",
        "reason": "the contact was opted out or paused in the directory",
    }
    await eventually(lambda: commands.cancels_for(awaited["data"]["action_id"]), what="the CancelAction")


async def test_import_that_opts_out_an_existing_contact_reaches_the_goal(wr: Harness) -> None:
    _, admin = await _tenant(wr)
    steps = [{"id": "call1", "type": "manual_call", "action_name": "Call"}]
    workflow_id = await _workflow(admin, steps, goals=["opted_out"])
    contact = await _contact(admin, external_id="crm-42")
    enrollment = await _enroll(admin, workflow_id, contact["id"])
    csv = f"external_id,name,phone,opted_out_sms\ncrm-42,Grace Hopper,{contact['phone']},true\n"
    response = await admin.post(
        "/v1/contacts/import",
        content=csv.encode(),
        headers={"content-type": "text/csv; charset=utf-8"},
    )
    assert response.status_code == 200, response.text
    state = await _state(admin, enrollment["id"])
    assert state["status"] == "stopped"
    assert state["history"][-2]["detail"]["reason"] == "the contact was opted out or paused by an import"


# --- publish validation and roles ----------------------------------------------------------------------


async def test_publish_lists_every_graph_problem_as_problem_json(wr: Harness) -> None:
    tenant, admin = await _tenant(wr)
    created = await admin.post(
        "/v1/workflows",
        json={
            "name": "Broken",
            "goals": ["replied", "purchased"],
            "steps": [
                {"id": "route", "type": "branch", "on": {"connected": "gone"}},
                {"id": "w", "type": "wait", "duration": "2 hours"},
                {"id": "s", "type": "manual_sms", "action_name": "A", "message": "Hi {{contact.nick}}"},
                {"id": "a", "type": "assign_user", "user_ids": [str(uuid.uuid4())]},
            ],
        },
    )
    assert created.status_code == 201, created.text
    response = await admin.post(f"/v1/workflows/{created.json()['id']}/publish")
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    fields = {e["field"] for e in response.json()["errors"]}
    assert {
        "steps[1].duration",
        "steps[2].message",
        "steps[3].user_ids[0]",
        "steps[0].on.connected",
        "goals[1]",
    } <= fields, response.json()

    # Agents cannot create workflows; another tenant cannot see this one.
    agent = wr.client(await wr.token(tenant, Role.AGENT))
    assert (await agent.post("/v1/workflows", json={"name": "x", "steps": []})).status_code == 403
    other = wr.client(await wr.token(await wr.new_tenant(), Role.ADMIN))
    assert (await other.post(f"/v1/workflows/{created.json()['id']}/publish")).status_code == 404
    assert (await other.get(f"/v1/workflows/{created.json()['id']}")).status_code == 404
