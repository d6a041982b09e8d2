"""workflow-runner against the real PostgreSQL and Kafka: HTTP API, outbox, consumer."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select
from wr_harness import Harness, action_completed, action_deleted, eventually

from manual_actions.auth import Role
from manual_actions.contracts import ActionQueued, decode
from workflow_runner.adapters import tables
from workflow_runner.adapters.sql import SqlUnitOfWork
from workflow_runner.handlers import handlers
from workflow_runner.handlers.commands import CreateContact, Enroll

pytestmark = pytest.mark.integration

PROBLEM_JSON = "application/problem+json"


async def _setup(wr: Harness, *, agents: int = 1, publish: bool = True) -> dict[str, Any]:
    """A tenant with an admin token, agents, one contact and a three-step workflow."""
    tenant = await wr.new_tenant()
    admin = wr.client(await wr.token(tenant, Role.ADMIN))
    agent_ids = []
    for i in range(agents):
        created = await admin.post(
            "/v1/users", json={"name": f"Alex Agent{i}", "phone": f"+1415555019{i}", "role": "agent"}
        )
        assert created.status_code == 201, created.text
        agent_ids.append(created.json()["id"])
    contact = await admin.post(
        "/v1/contacts",
        json={"name": "Ada Lovelace", "phone": "+1 415 555 0101", "custom_fields": {"plan": "gold"}},
    )
    assert contact.status_code == 201, contact.text
    workflow = await admin.post(
        "/v1/workflows",
        json={
            "name": "New lead follow-up",
            "steps": [
                {"id": "assign", "type": "assign_user", "user_ids": agent_ids},
                {
                    "id": "sms1",
                    "type": "manual_sms",
                    "action_name": "Intro SMS",
                    "message": "Hi {{contact.first_name}}, this is {{user.name}} "
                    "about {{contact.custom.plan}}.",
                },
                {
                    "id": "call1",
                    "type": "manual_call",
                    "action_name": "Intro call",
                    "notes": "Ask for {{contact.name}}",
                },
            ],
        },
    )
    assert workflow.status_code == 201, workflow.text
    assert workflow.json()["status"] == "draft"
    if publish:
        published = await admin.post(f"/v1/workflows/{workflow.json()['id']}/publish")
        assert published.status_code == 200, published.text
        assert published.json()["status"] == "published"
    return {
        "tenant": tenant,
        "admin": admin,
        "agents": agent_ids,
        "contact": contact.json(),
        "workflow": workflow.json(),
    }


async def _enroll(wr: Harness, s: dict[str, Any], contact_id: str | None = None) -> dict[str, Any]:
    response = await s["admin"].post(
        f"/v1/workflows/{s['workflow']['id']}/enrollments",
        json={"contact_id": contact_id or s["contact"]["id"]},
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def _queued(wr: Harness, enrollment_id: str, count: int) -> list[dict[str, Any]]:
    records = await eventually(
        lambda: len(wr.recorder.queued_for(enrollment_id)) >= count and wr.recorder.queued_for(enrollment_id),
        what=f"{count} ActionQueued for enrollment {enrollment_id}",
    )
    return [json.loads(r.value) for r in records]


def _published_probe(wr: Harness, subject: str) -> Any:
    async def probe() -> bool:
        async with SqlUnitOfWork(wr.service.engine) as uow:
            rows = (
                await uow.connection.execute(
                    select(tables.outbox.c.published_at).where(tables.outbox.c.key == subject)
                )
            ).all()
        return len(rows) == 1 and rows[0].published_at is not None

    return probe


async def test_enroll_publishes_action_queued_exactly_once(wr: Harness) -> None:
    s = await _setup(wr)
    enrollment = await _enroll(wr, s)
    assert (enrollment["status"], enrollment["current_step_id"]) == ("waiting", "sms1")

    queued = await _queued(wr, enrollment["id"], 1)
    record = wr.recorder.queued_for(enrollment["id"])[0]
    envelope = decode(record.value)
    data = envelope.data
    assert isinstance(data, ActionQueued)
    assert (envelope.sequence, envelope.source, envelope.tenant) == (1, "workflow-runner", s["tenant"])
    assert envelope.subject == str(data.action_id) == record.key.decode()
    assert str(data.action_id) == enrollment["waiting_action_id"]
    assert data.message == "Hi Ada, this is Alex Agent0 about gold."
    assert (data.workflow_name, data.workflow_version, data.step_id) == ("New lead follow-up", 1, "sms1")
    assert (str(data.workflow_id), str(data.enrollment_id)) == (s["workflow"]["id"], enrollment["id"])
    assert str(data.assignee_user_id) == s["agents"][0]
    assert (str(data.contact.contact_id), data.contact.name, data.contact.phone) == (
        s["contact"]["id"],
        "Ada Lovelace",
        "+14155550101",
    )

    # Exactly once: after the relay marked the row published, still only one record exists.
    await eventually(_published_probe(wr, envelope.subject), what="the outbox row marked published")
    await asyncio.sleep(0.5)
    assert len(queued) == 1 and len(wr.recorder.queued_for(enrollment["id"])) == 1

    detail = await s["admin"].get(f"/v1/enrollments/{enrollment['id']}")
    assert detail.status_code == 200
    assert [h["event"] for h in detail.json()["history"]] == ["enrolled", "user_assigned", "action_queued"]


async def test_rolled_back_enrollment_publishes_nothing(wr: Harness) -> None:
    s = await _setup(wr)

    class CrashBeforeCommit(SqlUnitOfWork):
        async def commit(self) -> None:
            raise RuntimeError("simulated crash before commit")

    doomed = await handlers.create_contact(
        SqlUnitOfWork(wr.service.engine), CreateContact(s["tenant"], "Doomed Contact", "+14155550177")
    )
    with pytest.raises(RuntimeError, match="simulated crash"):
        await handlers.enroll(
            CrashBeforeCommit(wr.service.engine),
            Enroll(s["tenant"], uuid.UUID(s["workflow"]["id"]), doomed.id),
        )

    # A later enrollment goes through; the relay publishes in outbox order, so once its event is on
    # the topic an event of the rolled-back enrollment would be there too.
    marker = await _enroll(wr, s)
    await _queued(wr, marker["id"], 1)
    for record in wr.recorder.raw("ActionQueued"):
        assert json.loads(record.value)["data"]["contact"]["contact_id"] != str(doomed.id)
    async with SqlUnitOfWork(wr.service.engine) as uow:
        assert (
            await uow.enrollments.running_for(s["tenant"], uuid.UUID(s["workflow"]["id"]), doomed.id) is None
        )
        outbox_rows = await uow.connection.scalar(
            select(func.count())
            .select_from(tables.outbox)
            .where(tables.outbox.c.value["data"]["contact"]["contact_id"].astext == str(doomed.id))
        )
    assert outbox_rows == 0


async def test_action_completed_moves_on_and_duplicates_have_no_second_effect(wr: Harness) -> None:
    s = await _setup(wr)
    enrollment = await _enroll(wr, s)
    [sms_queued] = await _queued(wr, enrollment["id"], 1)

    completed = action_completed(sms_queued)
    first = await wr.produce(completed)
    queued = await _queued(wr, enrollment["id"], 2)
    call_queued = queued[1]
    assert call_queued["data"]["action_type"] == "call" and call_queued["data"]["step_id"] == "call1"
    assert call_queued["sequence"] == 1 and call_queued["causation_id"] == str(completed.id)
    state = (await s["admin"].get(f"/v1/enrollments/{enrollment['id']}")).json()
    assert (state["status"], state["current_step_id"]) == ("waiting", "call1")
    assert state["waiting_action_id"] == call_queued["data"]["action_id"]

    # The same event redelivered, and a second completion of the same action with a new event id.
    again = await wr.produce(completed)
    other = await wr.produce(action_completed(sms_queued, sequence=3))
    await wr.wait_consumed(first, again, other)
    await asyncio.sleep(0.3)
    assert len(wr.recorder.queued_for(enrollment["id"])) == 2
    after = (await s["admin"].get(f"/v1/enrollments/{enrollment['id']}")).json()
    assert after["history"] == state["history"] and after["current_step_id"] == "call1"

    # Deleting the call action (the trash icon) finishes the last step: the enrollment completes.
    deleted = await wr.produce(action_deleted(call_queued))
    await wr.wait_consumed(deleted)
    final = (await s["admin"].get(f"/v1/enrollments/{enrollment['id']}")).json()
    assert (final["status"], final["current_step_id"]) == ("completed", None)
    assert [(h["step_id"], h["event"]) for h in final["history"]][-4:] == [
        ("sms1", "action_completed"),
        ("call1", "action_queued"),
        ("call1", "action_deleted"),
        (None, "completed"),
    ]
    assert len(wr.recorder.queued_for(enrollment["id"])) == 2


async def test_round_robin_across_enrollments(wr: Harness) -> None:
    s = await _setup(wr, agents=2)
    assignees = []
    for i in range(4):
        contact = await s["admin"].post(
            "/v1/contacts", json={"name": f"Contact {i}", "phone": "+14155550102"}
        )
        enrollment = await _enroll(wr, s, contact.json()["id"])
        detail = (await s["admin"].get(f"/v1/enrollments/{enrollment['id']}")).json()
        assignees.append(detail["history"][1]["detail"]["user_id"])
    assert assignees == [s["agents"][0], s["agents"][1], s["agents"][0], s["agents"][1]]


async def test_unpublished_workflow_is_refused_with_409_naming_it(wr: Harness) -> None:
    s = await _setup(wr, publish=False)
    response = await s["admin"].post(
        f"/v1/workflows/{s['workflow']['id']}/enrollments", json={"contact_id": s["contact"]["id"]}
    )
    assert response.status_code == 409
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    assert response.json()["workflow_id"] == s["workflow"]["id"]


async def test_enrolling_twice_while_running_is_refused(wr: Harness) -> None:
    s = await _setup(wr)
    first = await _enroll(wr, s)
    again = await s["admin"].post(
        f"/v1/workflows/{s['workflow']['id']}/enrollments", json={"contact_id": s["contact"]["id"]}
    )
    assert again.status_code == 409 and again.json()["enrollment_id"] == first["id"]


async def test_publish_reports_every_problem(wr: Harness) -> None:
    tenant = await wr.new_tenant()
    admin = wr.client(await wr.token(tenant, Role.ADMIN))
    ghost = str(uuid.uuid4())
    workflow = await admin.post(
        "/v1/workflows",
        json={
            "name": "Broken",
            "steps": [
                {"id": "a", "type": "assign_user", "user_ids": [ghost]},
                {"id": "w", "type": "sleep"},
                {"id": "s", "type": "manual_sms", "action_name": "SMS", "message": ""},
                {"id": "t", "type": "manual_sms", "action_name": "SMS", "message": "{{ __import__('os') }}"},
            ],
        },
    )
    assert workflow.status_code == 201
    response = await admin.post(f"/v1/workflows/{workflow.json()['id']}/publish")
    assert response.status_code == 422 and response.headers["content-type"].startswith(PROBLEM_JSON)
    body = response.json()
    assert [e["field"] for e in body["errors"]] == [
        "steps[0].user_ids[0]",
        "steps[1].type",
        "steps[2].message",
        "steps[3].message",
    ]
    assert ghost in body["errors"][0]["message"]
    still = await admin.get(f"/v1/workflows/{workflow.json()['id']}")
    assert still.json()["status"] == "draft" and still.json()["published_version"] is None


async def test_published_version_is_kept_when_the_workflow_is_edited(wr: Harness) -> None:
    s = await _setup(wr)
    workflow_id = s["workflow"]["id"]
    edited = await s["admin"].put(
        f"/v1/workflows/{workflow_id}",
        json={"name": "Renamed", "steps": [{"id": "only", "type": "manual_call", "action_name": "Call"}]},
    )
    assert edited.status_code == 200, edited.text
    body = edited.json()
    assert (body["version"], body["status"], body["published_version"]) == (2, "draft", 1)
    assert body["versions"][0]["steps"] == s["workflow"]["steps"]
    enrollment = await _enroll(wr, s)
    assert (enrollment["workflow_version"], enrollment["current_step_id"]) == (1, "sms1")


async def test_other_tenants_entities_answer_404(wr: Harness) -> None:
    mine = await _setup(wr)
    theirs = await _setup(wr)
    their_enrollment = await _enroll(wr, theirs)
    admin = mine["admin"]
    for path in (
        f"/v1/contacts/{theirs['contact']['id']}",
        f"/v1/workflows/{theirs['workflow']['id']}",
        f"/v1/enrollments/{their_enrollment['id']}",
        f"/v1/users/{theirs['agents'][0]}",
    ):
        response = await admin.get(path)
        assert response.status_code == 404, path
        assert response.headers["content-type"].startswith(PROBLEM_JSON)
    into_theirs = await admin.post(
        f"/v1/workflows/{theirs['workflow']['id']}/enrollments", json={"contact_id": mine["contact"]["id"]}
    )
    assert into_theirs.status_code == 404 and into_theirs.json()["workflow_id"] == theirs["workflow"]["id"]
    their_contact = await admin.post(
        f"/v1/workflows/{mine['workflow']['id']}/enrollments", json={"contact_id": theirs["contact"]["id"]}
    )
    assert their_contact.status_code == 404 and their_contact.json()["contact_id"] == theirs["contact"]["id"]
    token = await admin.post(f"/v1/users/{theirs['agents'][0]}/tokens")
    assert token.status_code == 404
    listed = await admin.get("/v1/contacts")
    assert [c["id"] for c in listed.json()["items"]] == [mine["contact"]["id"]]


async def test_roles_are_enforced(wr: Harness) -> None:
    s = await _setup(wr)
    token = await s["admin"].post(f"/v1/users/{s['agents'][0]}/tokens")
    assert token.status_code == 201, token.text
    assert (token.json()["role"], token.json()["user_id"]) == ("agent", s["agents"][0])
    principal = await wr.identity.authenticate(token.json()["token"])
    assert principal is not None and (principal.tenant, principal.role, str(principal.user_id)) == (
        s["tenant"],
        Role.AGENT,
        s["agents"][0],
    )
    agent = wr.client(token.json()["token"])

    forbidden = await agent.post("/v1/workflows", json={"name": "Nope", "steps": []})
    assert forbidden.status_code == 403 and forbidden.headers["content-type"].startswith(PROBLEM_JSON)
    assert (await agent.post("/v1/contacts", json={"name": "X"})).status_code == 403
    assert (
        await agent.post(
            f"/v1/workflows/{s['workflow']['id']}/enrollments", json={"contact_id": s["contact"]["id"]}
        )
    ).status_code == 403
    assert (await agent.get(f"/v1/contacts/{s['contact']['id']}")).status_code == 200
    assert (await agent.get("/v1/contacts")).status_code == 200
    assert (await agent.get(f"/v1/users/{s['agents'][0]}")).status_code == 200

    manager = wr.client(await wr.token(s["tenant"], Role.MANAGER))
    assert (await manager.post("/v1/workflows", json={"name": "Nope", "steps": []})).status_code == 403
    assert (
        await manager.post("/v1/users", json={"name": "M", "phone": "+14155550100", "role": "agent"})
    ).status_code == 403
    assert (await manager.post("/v1/contacts", json={"name": "Made by manager"})).status_code == 201
    other = await manager.post("/v1/contacts", json={"name": "Enrolled by manager"})
    assert (
        await manager.post(
            f"/v1/workflows/{s['workflow']['id']}/enrollments", json={"contact_id": other.json()["id"]}
        )
    ).status_code == 201

    assert (await wr.client(None).get("/v1/contacts")).status_code == 401
    assert (await wr.client("ma_bogus_token").get("/v1/contacts")).status_code == 401


async def test_bad_phone_is_422_naming_the_field(wr: Harness) -> None:
    tenant = await wr.new_tenant()
    admin = wr.client(await wr.token(tenant, Role.ADMIN))
    for path, body in (
        ("/v1/contacts", {"name": "Bad", "phone": "555-0100"}),
        ("/v1/users", {"name": "Bad", "phone": "+1 555 555 0100", "role": "agent"}),
    ):
        response = await admin.post(path, json=body)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith(PROBLEM_JSON)
        assert [e["field"] for e in response.json()["errors"]] == ["body.phone"]
    several = await admin.post(
        "/v1/contacts",
        json={
            "name": "Bad",
            "phone": "12",
            "email": "nope",
            "timezone": "Nowhere/Land",
            "custom_fields": {"9x": 1},
        },
    )
    assert {e["field"] for e in several.json()["errors"]} == {
        "body.phone",
        "body.email",
        "body.timezone",
        "body.custom_fields",
    }
    owner = await admin.post("/v1/contacts", json={"name": "Owned", "owner_user_id": str(uuid.uuid4())})
    assert owner.status_code == 422 and owner.json()["errors"][0]["field"] == "body.owner_user_id"


async def test_health_and_readiness(wr: Harness) -> None:
    client = wr.client(None)
    assert (await client.get("/health")).status_code == 200
    ready = await client.get("/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "identity": "ok"}


async def test_migrations_match_the_tables(wr: Harness) -> None:
    async with wr.service.engine.connect() as conn:
        diff = await conn.run_sync(
            lambda sync: compare_metadata(
                MigrationContext.configure(sync, opts={"compare_type": True}), tables.metadata
            )
        )
    assert diff == []
