"""Bulk enrollment against the real PostgreSQL and Kafka: all at once over a filter, drip batches
at their interval, every re-enrollment policy, idempotent retry by request id, pause / resume /
cancel, per-contact history, and roles, tenants and problem+json on every endpoint."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import func, select, update
from wr_harness import Harness, action_completed, eventually

from manual_actions.auth import Role
from manual_actions.outbox import BATCH_HEADER
from workflow_runner.adapters import tables
from workflow_runner.adapters.bulk_sql import SqlBulkUnitOfWork
from workflow_runner.domain.enrollments import Enrollment

pytestmark = pytest.mark.integration

PROBLEM_JSON = "application/problem+json"


async def _tenant(wr: Harness) -> tuple[str, httpx.AsyncClient]:
    tenant = await wr.new_tenant()
    return tenant, wr.client(await wr.token(tenant, Role.ADMIN))


async def _agent(admin: httpx.AsyncClient) -> str:
    created = await admin.post(
        "/v1/users", json={"name": "Alex Agent", "phone": "+14155550190", "role": "agent"}
    )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def _workflow(admin: httpx.AsyncClient, agent_id: str, *, publish: bool = True) -> str:
    """A published one-step-after-assignment workflow: Assign User, then one Manual SMS."""
    created = await admin.post(
        "/v1/workflows",
        json={
            "name": "Bulk follow-up",
            "steps": [
                {"id": "assign", "type": "assign_user", "user_ids": [agent_id], "only_unassigned": True},
                {
                    "id": "sms1",
                    "type": "manual_sms",
                    "action_name": "Hello",
                    "message": "Hi {{contact.first_name}}, {{user.first_name}} here.",
                },
            ],
        },
    )
    assert created.status_code == 201, created.text
    workflow_id = str(created.json()["id"])
    if publish:
        published = await admin.post(f"/v1/workflows/{workflow_id}/publish")
        assert published.status_code == 200, published.text
    return workflow_id


async def _contacts(admin: httpx.AsyncClient, count: int, *, tag: str = "bulk") -> list[str]:
    rows = [
        {
            "name": f"Contact {i:03d}",
            "phone": f"+1415555{1000 + i:04d}",
            "tags": [tag],
            "external_id": f"{tag}-{i}",
        }
        for i in range(count)
    ]
    imported = await admin.post("/v1/contacts/import", json=rows)
    assert imported.status_code == 200 and imported.json()["imported"] == count, imported.text
    listed = await admin.get("/v1/contacts", params={"tag": tag, "limit": 500})
    return [c["id"] for c in listed.json()["items"]]


async def _done(admin: httpx.AsyncClient, run_id: str, within: float = 60.0) -> dict[str, Any]:
    async def finished() -> dict[str, Any] | None:
        body: dict[str, Any] = (await admin.get(f"/v1/bulk-enrollments/{run_id}")).json()
        return body if body["status"] == "done" else None

    return await eventually(finished, what=f"bulk enrollment {run_id} done", within=within)


async def _count_enrollments(wr: Harness, tenant: str, workflow_id: str) -> int:
    e = tables.enrollments.c
    async with wr.service.engine.connect() as conn:
        result = await conn.execute(
            select(func.count()).where(e.tenant_id == tenant, e.workflow_id == uuid.UUID(workflow_id))
        )
        return int(result.scalar_one())


async def test_all_at_once_over_a_filter_enrolls_every_match_once(wr: Harness) -> None:
    tenant, admin = await _tenant(wr)
    agent = await _agent(admin)
    workflow_id = await _workflow(admin, agent)
    ids = await _contacts(admin, 30, tag="vip")
    await _contacts(admin, 3, tag="other")  # not matched by the filter

    response = await admin.post(
        f"/v1/workflows/{workflow_id}/bulk-enrollments",
        json={"request_id": "campaign-1", "target": {"filter": {"tag": "vip"}}},
    )
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["total"] == 30 and accepted["delivery"]["method"] == "all_at_once"
    assert accepted["reenrollment"] == "skip_if_active"
    run = await _done(admin, accepted["id"])
    assert (run["enrolled"], run["skipped_total"], run["remaining"]) == (30, 0, 0)
    assert await _count_enrollments(wr, tenant, workflow_id) == 30

    # Every contact has an enrollment that names the run, waiting on its SMS, rendered for it.
    history = (await admin.get("/v1/enrollments", params={"contact_id": ids[7]})).json()["items"]
    assert len(history) == 1 and history[0]["status"] == "waiting"
    assert history[0]["history"][0]["detail"]["bulk_enrollment_id"] == accepted["id"]
    assert [h["event"] for h in history[0]["history"]] == ["enrolled", "user_assigned", "action_queued"]
    contact = (await admin.get(f"/v1/contacts/{ids[7]}")).json()
    assert contact["owner_user_id"] == agent

    def queued_for_tenant() -> list[dict[str, Any]] | None:
        found = [json.loads(r.value) for r in wr.recorder.raw("ActionQueued")]  # type: ignore[arg-type]
        mine = [q for q in found if q["tenant"] == tenant]
        return mine if len(mine) >= 30 else None

    queued = await eventually(queued_for_tenant, what="30 ActionQueued on the topic")
    assert len(queued) == 30
    assert len({q["data"]["contact"]["contact_id"] for q in queued}) == 30
    mine = next(q for q in queued if q["data"]["contact"]["contact_id"] == ids[7])
    assert mine["data"]["message"] == "Hi Contact, Alex here."
    assert mine["data"]["assignee_user_id"] == agent
    assert mine["data"]["enrollment_id"] == history[0]["id"]

    results = (
        await admin.get(f"/v1/bulk-enrollments/{accepted['id']}/contacts", params={"limit": 1000})
    ).json()
    assert len(results["items"]) == 30 and {r["outcome"] for r in results["items"]} == {"enrolled"}


async def test_drip_enrolls_a_batch_per_interval(wr: Harness) -> None:
    tenant, admin = await _tenant(wr)
    workflow_id = await _workflow(admin, await _agent(admin))
    ids = await _contacts(admin, 5)
    response = await admin.post(
        f"/v1/workflows/{workflow_id}/bulk-enrollments",
        json={
            "request_id": "drip-1",
            "target": {"contact_ids": ids},
            "delivery": {"method": "drip", "batch_size": 2, "interval_seconds": 2},
        },
    )
    assert response.status_code == 202, response.text
    run_id = response.json()["id"]

    first = await eventually(lambda: _progress_at_least(admin, run_id, 2), what="the first drip batch")
    assert first["enrolled"] == 2 and first["status"] == "running"
    assert first["next_batch_due_at"] is not None
    run = await _done(admin, run_id)
    assert run["enrolled"] == 5
    e = tables.enrollments.c
    async with wr.service.engine.connect() as conn:
        created = sorted(
            (await conn.execute(select(e.created_at).where(e.tenant_id == tenant))).scalars().all()
        )
    batches = [created[0:2], created[2:4], created[4:5]]
    assert all(b[-1] - b[0] < (created[2] - created[1]) for b in batches[:2])
    # The next batch never starts before the interval after the previous one.
    assert (created[2] - created[1]).total_seconds() >= 2
    assert (created[4] - created[3]).total_seconds() >= 2


async def _progress_at_least(admin: httpx.AsyncClient, run_id: str, enrolled: int) -> dict[str, Any] | None:
    body: dict[str, Any] = (await admin.get(f"/v1/bulk-enrollments/{run_id}")).json()
    return body if body["enrolled"] >= enrolled else None


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("skip_if_active", {"active": "skipped_active", "finished": "enrolled", "new": "enrolled"}),
        (
            "skip_if_enrolled_ever",
            {"active": "skipped_active", "finished": "skipped_enrolled_before", "new": "enrolled"},
        ),
        ("allow_reenrollment", {"active": "restarted", "finished": "enrolled", "new": "enrolled"}),
    ],
)
async def test_reenrollment_policies(wr: Harness, policy: str, expected: dict[str, str]) -> None:
    tenant, admin = await _tenant(wr)
    workflow_id = await _workflow(admin, await _agent(admin))
    active, finished, new = await _contacts(admin, 3)
    for contact_id in (active, finished):
        enrolled = await admin.post(
            f"/v1/workflows/{workflow_id}/enrollments", json={"contact_id": contact_id}
        )
        assert enrolled.status_code == 201, enrolled.text
    finished_enrollment = (await admin.get("/v1/enrollments", params={"contact_id": finished})).json()[
        "items"
    ][0]
    queued = await eventually(
        lambda: [json.loads(r.value) for r in wr.recorder.queued_for(finished_enrollment["id"])] or None,  # type: ignore[arg-type]
        what="the finished contact's ActionQueued",
    )
    await wr.wait_consumed(await wr.produce(action_completed(queued[0])))
    assert (await admin.get(f"/v1/enrollments/{finished_enrollment['id']}")).json()["status"] == "completed"

    unknown = str(uuid.uuid4())
    response = await admin.post(
        f"/v1/workflows/{workflow_id}/bulk-enrollments",
        json={
            "request_id": f"policy-{policy}",
            "target": {"contact_ids": [active, finished, new, unknown, new]},
            "reenrollment": policy,
        },
    )
    assert response.status_code == 202, response.text
    assert response.json()["total"] == 4  # the repeated id counts once
    run = await _done(admin, response.json()["id"])
    outcomes = {
        r["contact_id"]: r["outcome"]
        for r in (await admin.get(f"/v1/bulk-enrollments/{run['id']}/contacts")).json()["items"]
    }
    assert outcomes == {
        active: expected["active"],
        finished: expected["finished"],
        new: expected["new"],
        unknown: "skipped_not_found",
    }
    assert run["skipped"]["skipped_not_found"] == 1
    assert run["enrolled"] == sum(1 for o in expected.values() if o in ("enrolled", "restarted"))
    passes = (await admin.get("/v1/enrollments", params={"contact_id": active})).json()["items"]
    if expected["active"] == "restarted":
        # The running pass was stopped (its action cancelled) in the chunk that started the new one.
        old, new = sorted(passes, key=lambda e: e["created_at"])
        assert old["status"] == "stopped" and new["status"] == "waiting"
        stop = old["history"][-1]
        assert stop["event"] == "stopped" and run["id"] in stop["detail"]["reason"]
        o = tables.outbox.c
        async with wr.service.engine.connect() as conn:
            cancels = (
                (
                    await conn.execute(
                        select(o.value).where(o.tenant == tenant, o.value["type"].astext == "CancelAction")
                    )
                )
                .scalars()
                .all()
            )
        assert [c["data"]["action_id"] for c in cancels] == [stop["detail"]["cancelled_action_id"]]
    else:
        assert [e["status"] for e in passes] == ["waiting"]
    # Never two running enrollments of one contact in one workflow.
    e = tables.enrollments.c
    async with wr.service.engine.connect() as conn:
        running = (
            await conn.execute(
                select(e.contact_id, func.count())
                .where(e.tenant_id == tenant, e.status.in_(["active", "waiting"]))
                .group_by(e.contact_id)
            )
        ).all()
    assert all(count == 1 for _, count in running)


async def test_a_retried_request_starts_no_second_run(wr: Harness) -> None:
    tenant, admin = await _tenant(wr)
    workflow_id = await _workflow(admin, await _agent(admin))
    ids = await _contacts(admin, 4)
    body = {"request_id": "same", "target": {"contact_ids": ids}}
    first = await admin.post(f"/v1/workflows/{workflow_id}/bulk-enrollments", json=body)
    await _done(admin, first.json()["id"])
    again = await admin.post(f"/v1/workflows/{workflow_id}/bulk-enrollments", json=body)
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert again.json()["enrolled"] == 4
    assert await _count_enrollments(wr, tenant, workflow_id) == 4

    other = await admin.post(
        f"/v1/workflows/{workflow_id}/bulk-enrollments", json={**body, "target": {"contact_ids": ids[:1]}}
    )
    assert other.status_code == 409 and other.headers["content-type"] == PROBLEM_JSON
    assert other.json()["errors"][0]["field"] == "body.request_id"


async def test_pause_resume_and_cancel(wr: Harness) -> None:
    _, admin = await _tenant(wr)
    workflow_id = await _workflow(admin, await _agent(admin))
    ids = await _contacts(admin, 6)
    response = await admin.post(
        f"/v1/workflows/{workflow_id}/bulk-enrollments",
        json={
            "request_id": "slow",
            "target": {"contact_ids": ids},
            "delivery": {"method": "drip", "batch_size": 2, "interval_seconds": 3600},
        },
    )
    run_id = response.json()["id"]
    await eventually(lambda: _progress_at_least(admin, run_id, 2), what="the first batch")
    paused = await admin.post(f"/v1/bulk-enrollments/{run_id}/pause")
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    resumed = await admin.post(f"/v1/bulk-enrollments/{run_id}/resume")
    assert resumed.json()["status"] == "running"
    cancelled = await admin.post(f"/v1/bulk-enrollments/{run_id}/cancel")
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["enrolled"] == 2
    assert cancelled.json()["remaining"] == 4 and cancelled.json()["next_batch_due_at"] is None
    refused = await admin.post(f"/v1/bulk-enrollments/{run_id}/resume")
    assert refused.status_code == 409 and refused.headers["content-type"] == PROBLEM_JSON
    assert (await admin.post(f"/v1/bulk-enrollments/{run_id}/cancel")).status_code == 200  # again: no-op


async def test_roles_tenants_and_problems_on_every_endpoint(wr: Harness) -> None:
    tenant, admin = await _tenant(wr)
    agent_id = await _agent(admin)
    workflow_id = await _workflow(admin, agent_id)
    draft_id = await _workflow(admin, agent_id, publish=False)
    ids = await _contacts(admin, 2)
    run = (
        await admin.post(
            f"/v1/workflows/{workflow_id}/bulk-enrollments",
            json={"request_id": "r", "target": {"contact_ids": ids}},
        )
    ).json()
    manager = wr.client(await wr.token(tenant, Role.MANAGER))
    agent = wr.client(await wr.token(tenant, Role.AGENT, uuid.UUID(agent_id)))
    _, stranger = await _tenant(wr)

    submit = (f"/v1/workflows/{workflow_id}/bulk-enrollments", {"request_id": "x", "target": {"filter": {}}})
    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", submit[0], submit[1]),
        ("GET", f"/v1/bulk-enrollments/{run['id']}", None),
        ("GET", f"/v1/bulk-enrollments/{run['id']}/contacts", None),
        ("POST", f"/v1/bulk-enrollments/{run['id']}/pause", None),
        ("POST", f"/v1/bulk-enrollments/{run['id']}/resume", None),
        ("POST", f"/v1/bulk-enrollments/{run['id']}/cancel", None),
    ]
    for method, url, body in calls:
        denied = await agent.request(method, url, json=body)
        assert denied.status_code == 403, (url, denied.text)
        hidden = await stranger.request(method, url, json=body)
        assert hidden.status_code == 404 and hidden.headers["content-type"] == PROBLEM_JSON, (
            url,
            hidden.text,
        )
        assert (await wr.client(None).request(method, url, json=body)).status_code == 401
    assert (await manager.get(f"/v1/bulk-enrollments/{run['id']}")).status_code == 200
    managed = await manager.post(submit[0], json={**submit[1], "request_id": "by-manager"})
    assert managed.status_code == 202, managed.text

    unpublished = await admin.post(
        f"/v1/workflows/{draft_id}/bulk-enrollments", json={"request_id": "u", "target": {"filter": {}}}
    )
    assert unpublished.status_code == 409 and unpublished.json()["title"] == "Workflow not published"

    bad: list[tuple[dict[str, Any], str]] = [
        ({"target": {"filter": {}}}, "body.request_id"),
        ({"request_id": "b", "target": {"filter": {}, "contact_ids": ids}}, "body.target"),
        ({"request_id": "b", "target": {}}, "body.target"),
        ({"request_id": "b", "target": {"contact_ids": ["not-a-uuid"]}}, "body.target.contact_ids.0"),
        ({"request_id": "b", "target": {"filter": {"phone": "+1 555"}}}, "body.target.filter.phone"),
        ({"request_id": "b", "target": {"filter": {"colour": "red"}}}, "body.target.filter.colour"),
        ({"request_id": "b", "target": {"filter": {}}, "delivery": {"method": "drip"}}, "body.delivery"),
        (
            {
                "request_id": "b",
                "target": {"filter": {}},
                "delivery": {"method": "drip", "batch_size": 0, "interval_seconds": 5},
            },
            "body.delivery.batch_size",
        ),
        ({"request_id": "b", "target": {"filter": {}}, "reenrollment": "always"}, "body.reenrollment"),
    ]
    for body, field in bad:
        answer = await admin.post(f"/v1/workflows/{workflow_id}/bulk-enrollments", json=body)
        assert answer.status_code == 422 and answer.headers["content-type"] == PROBLEM_JSON, answer.text
        assert answer.json()["errors"][0]["field"] == field, (field, answer.json())
    missing = await admin.get(f"/v1/bulk-enrollments/{uuid.uuid4()}")
    assert missing.status_code == 404 and "bulk_enrollment_id" in missing.json()


async def test_a_chunk_worked_twice_fails_instead_of_enrolling_twice(wr: Harness) -> None:
    """The net under the position cursor: an enrollment names its run and a run enrolls a contact
    once (a unique index), so writing a chunk again (as a bug in the cursor would) fails the
    transaction, even after the contact's first enrollment has finished."""
    tenant, admin = await _tenant(wr)
    workflow_id = await _workflow(admin, await _agent(admin))
    ids = await _contacts(admin, 1)
    accepted = await admin.post(
        f"/v1/workflows/{workflow_id}/bulk-enrollments",
        json={"request_id": "net", "target": {"contact_ids": ids}},
    )
    await _done(admin, accepted.json()["id"])
    e = tables.enrollments.c
    async with wr.service.engine.begin() as conn:
        await conn.execute(update(tables.enrollments).where(e.tenant_id == tenant).values(status="completed"))
    uow = SqlBulkUnitOfWork(wr.service.engine)
    with pytest.raises(asyncpg.UniqueViolationError) as violation:
        async with uow:
            run = await uow.bulk.get(tenant, uuid.UUID(accepted.json()["id"]))
            assert run is not None
            again = Enrollment.start(
                tenant=tenant,
                contact_id=uuid.UUID(ids[0]),
                workflow_id=run.workflow_id,
                workflow_version=run.workflow_version,
                now=datetime.now(UTC),
            )
            await uow.bulk.store_chunk(run, datetime.now(UTC), [again], [], [], [])
    assert violation.value.constraint_name == "ux_enrollments_bulk"
    assert await _count_enrollments(wr, tenant, workflow_id) == 1


async def test_one_step_workflow_takes_the_lean_path_and_reads_the_same(wr: Harness) -> None:
    """A run into a workflow whose first step is a Manual SMS (the lean path: rows copied from one
    contact run through the runner, history in one row, events in one outbox batch row): every
    contact's enrollment, history, outcome and ActionQueued read as a single enrollment's do, a
    restarted contact keeps its outcome, and the enrollments go on when their actions finish."""
    tenant, admin = await _tenant(wr)
    agent = await _agent(admin)
    created = await admin.post(
        "/v1/workflows",
        json={
            "name": "One SMS",
            "steps": [
                {
                    "id": "sms1",
                    "type": "manual_sms",
                    "action_name": "Hi",
                    "message": "Hi {{contact.first_name}}",
                }
            ],
        },
    )
    workflow_id = str(created.json()["id"])
    assert (await admin.post(f"/v1/workflows/{workflow_id}/publish")).status_code == 200
    ids = await _contacts(admin, 5, tag="lean")
    active = ids[0]
    assert (
        await admin.post(f"/v1/workflows/{workflow_id}/enrollments", json={"contact_id": active})
    ).status_code == 201
    # A contact's owner becomes the action's assignee.
    assert (await admin.patch(f"/v1/contacts/{ids[1]}", json={"owner_user_id": agent})).status_code == 200

    response = await admin.post(
        f"/v1/workflows/{workflow_id}/bulk-enrollments",
        json={
            "request_id": "lean",
            "target": {"filter": {"tag": "lean"}},
            "reenrollment": "allow_reenrollment",
        },
    )
    assert response.status_code == 202, response.text
    run = await _done(admin, response.json()["id"])
    assert run["enrolled"] == 5

    pages: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"after": after} if after else {})}
        page = (await admin.get(f"/v1/bulk-enrollments/{run['id']}/contacts", params=params)).json()
        pages.extend(page["items"])
        after = page["next_after"]
        if after is None:
            break
    assert [p["contact_id"] for p in pages] == sorted(ids)
    outcomes = {p["contact_id"]: p["outcome"] for p in pages}
    assert outcomes == {c: "restarted" if c == active else "enrolled" for c in ids}
    only_enrolled = (
        await admin.get(f"/v1/bulk-enrollments/{run['id']}/contacts", params={"outcome": "enrolled"})
    ).json()["items"]
    assert sorted(p["contact_id"] for p in only_enrolled) == sorted(c for c in ids if c != active)

    for contact_id in ids:
        passes = (await admin.get("/v1/enrollments", params={"contact_id": contact_id})).json()["items"]
        mine = next(p for p in passes if p["status"] == "waiting")
        assert [h["event"] for h in mine["history"]] == ["enrolled", "action_queued"]
        assert mine["history"][0]["detail"]["bulk_enrollment_id"] == run["id"]
        assert mine["history"][1]["step_id"] == "sms1"
        assert next(p for p in pages if p["contact_id"] == contact_id)["enrollment_id"] == mine["id"]
        assert mine["history"][1]["detail"]["assignee_user_id"] == (agent if contact_id == ids[1] else None)

    # It was the lean path: one history row per enrollment, the five events in one outbox row.
    h, o = tables.enrollment_history.c, tables.outbox.c
    async with wr.service.engine.connect() as conn:
        rows = await conn.scalar(
            select(func.count()).where(
                h.tenant_id == tenant, h.enrollment_id.in_([uuid.UUID(p["enrollment_id"]) for p in pages])
            )
        )
        batches = (
            (await conn.execute(select(o.headers).where(o.tenant == tenant, o.key == ""))).scalars().all()
        )
        single = (
            await conn.execute(
                select(o.headers).where(
                    o.tenant == tenant, o.key != "", o.value["type"].astext == "ActionQueued"
                )
            )
        ).scalar_one()
    assert rows == 5
    assert batches == [[[BATCH_HEADER, "5"], *single]]  # each event gets the single event's headers

    def queued_for_tenant() -> list[dict[str, Any]] | None:
        found = [json.loads(r.value) for r in wr.recorder.raw("ActionQueued")]  # type: ignore[arg-type]
        mine = [q for q in found if q["tenant"] == tenant]
        return mine if len(mine) >= 6 else None  # the single enrollment's and the run's five

    queued = await eventually(queued_for_tenant, what="the run's ActionQueued on the topic")
    by_enrollment = {q["data"]["enrollment_id"]: q for q in queued}
    for item in pages:
        event = by_enrollment[item["enrollment_id"]]
        assert (
            event["data"]["message"] == "Hi Contact"
            and event["data"]["contact"]["contact_id"] == item["contact_id"]
        )
        assert event["subject"] == event["data"]["action_id"]
    # The runner goes on with a lean-path enrollment when its action finishes.
    first = by_enrollment[pages[1]["enrollment_id"]]
    await wr.wait_consumed(await wr.produce(action_completed(first)))
    finished = (await admin.get(f"/v1/enrollments/{pages[1]['enrollment_id']}")).json()
    assert finished["status"] == "completed"
    assert [h["event"] for h in finished["history"]][:2] == ["enrolled", "action_queued"]
