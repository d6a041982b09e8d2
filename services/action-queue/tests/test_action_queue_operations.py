"""Queue operations against the real Kafka and PostgreSQL: the maintenance loop (expiry, lapsed
leases, scheduled SMS), counts in the list, and bulk requests (chunked, idempotent, safe while
someone works the queue)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aq_factories import action_queued
from aq_harness import Harness, eventually
from test_action_queue_integration import Tenant, _problem

from action_queue.adapters.sql import SqlUnitOfWork
from action_queue.domain import ActionStatus, ManualAction
from action_queue.handlers import maintenance
from manual_actions.contracts import ActionType, topics

pytestmark = pytest.mark.integration


@pytest.fixture
async def tenant(aq: Harness) -> Tenant:
    return await Tenant.create(aq)


async def _ok(response: Any, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


async def _insert(aq: Harness, tenant: str, count: int, assignee: uuid.UUID,
                  **kwargs: Any) -> list[uuid.UUID]:
    """Store ``count`` queued actions directly (the bulk tests are about bulk, not materialisation)."""
    base = datetime.now(UTC) - timedelta(hours=1)
    actions = [ManualAction.from_queued(tenant, action_queued(assignee=assignee, queued_at=base + timedelta(
        milliseconds=i), **kwargs), sequence=1) for i in range(count)]
    async with aq.service.uow() as uow:
        for action in actions:
            assert await uow.actions.add_if_absent(action)
        await uow.commit()
    return [a.id for a in actions]


# --- maintenance loop --------------------------------------------------------------------------


async def test_the_loop_expires_an_action_past_its_expiry(aq: Harness, tenant: Tenant) -> None:
    action_id = await tenant.queue(expires_at=datetime.now(UTC) + timedelta(seconds=1))
    expired = await tenant.status_becomes(action_id, "expired")
    assert expired["status_reason"] == "expired"
    events = await eventually(lambda: aq.recorder.about(topics.ACTION_LIFECYCLE, action_id, "ActionExpired"),
                              what="ActionExpired on action-lifecycle")
    assert [e["sequence"] for e in events] == [2]
    assert (await tenant.agent.post("/v1/queue/next")).status_code == 204


async def test_the_loop_sends_a_scheduled_sms_when_due(aq: Harness, tenant: Tenant) -> None:
    action_id = await tenant.queue()
    send_at = datetime.now(UTC) + timedelta(seconds=1)
    await _ok(await tenant.agent.post(f"/v1/actions/{action_id}/schedule-sms",
                                      json={"send_at": send_at.isoformat(), "body": "Right on time"}))
    sending = await tenant.status_becomes(action_id, "sending")
    assert sending["send_at"] is None and sending["message"] == "Right on time"
    [command] = await eventually(lambda: aq.recorder.about(topics.SMS_COMMANDS, action_id),
                                 what="SendSms for the scheduled SMS")
    assert (command["data"]["body"], command["data"]["requested_by"]) == ("Right on time",
                                                                         str(tenant.users["agent"]))


async def test_a_lapsed_lease_is_released_by_the_system(aq: Harness, tenant: Tenant) -> None:
    action_id = await tenant.queue()
    reserved = await _ok(await tenant.agent.post("/v1/queue/next"))
    later = datetime.fromisoformat(reserved["lease_expires_at"])
    changed = await maintenance.run_once(SqlUnitOfWork(aq.service.uow.engine), later, tenant=tenant.name)
    assert changed == 1
    body = await _ok(await tenant.admin.get(f"/v1/actions/{action_id}"))
    assert (body["status"], body["reserved_by"], body["status_reason"]) == ("queued", None, "lease_lapsed")
    assert body["history"][-1]["reason"] == "released: lease_lapsed"


# --- counts ------------------------------------------------------------------------------------


async def test_list_counts_every_match_per_status_and_type(aq: Harness, tenant: Tenant) -> None:
    workflow_id = uuid.uuid4()
    agent = tenant.users["agent"]
    await _insert(aq, tenant.name, 5, agent, workflow_id=workflow_id)
    calls = await _insert(aq, tenant.name, 3, agent, workflow_id=workflow_id, action_type=ActionType.CALL)
    await _ok(await tenant.agent.post(f"/v1/actions/{calls[0]}/skip", json={"reason": "not interested"}))
    page = await _ok(await tenant.admin.get(
        "/v1/actions", params={"workflow_id": str(workflow_id), "limit": 2, "counts": "true"}))
    assert len(page["items"]) == 2
    assert page["counts"] == {"total": 8, "by_type": {"sms": 5, "call": 3},
                              "by_status": {"queued": 7, "skipped": 1}}
    queued = await _ok(await tenant.agent.get("/v1/actions", params={
        "workflow_id": str(workflow_id), "status": "queued", "counts": "true"}))
    assert queued["counts"]["total"] == 7 and queued["counts"]["by_type"] == {"sms": 5, "call": 2}
    assert (await _ok(await tenant.other_agent.get("/v1/actions", params={"counts": "true"})))["counts"][
        "total"] == 0
    assert (await _ok(await tenant.admin.get("/v1/actions")))["counts"] is None


# --- bulk --------------------------------------------------------------------------------------


async def _bulk_done(tenant: Tenant, request_id: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        body = await _ok(await tenant.admin.get(f"/v1/actions/bulk/{request_id}"))
        return body if body["status"] == "done" else None

    result: dict[str, Any] = await eventually(probe, what=f"bulk request {request_id} done", within=60)
    return result


async def test_bulk_reassign_in_chunks_while_an_agent_works_the_queue(aq: Harness, tenant: Tenant) -> None:
    agent, other = tenant.users["agent"], tenant.users["other_agent"]
    ids = await _insert(aq, tenant.name, 1200, agent)  # the fixture's chunk is 500: three chunks
    request = {"request_id": f"move-{uuid.uuid4()}", "operation": "reassign",
               "filter": {"assignee_user_id": str(agent)}, "assignee_user_id": str(other),
               "reason": "Ada is out of office"}
    accepted = await _ok(await tenant.admin.post("/v1/actions/bulk", json=request), 202)
    assert accepted["status"] == "running"

    worked: list[str] = []

    async def work() -> None:  # the agent keeps taking actions while the bulk request runs
        for _ in range(40):
            response = await tenant.agent.post("/v1/queue/next")
            if response.status_code == 204:
                return
            worked.append(response.json()["id"])
            await asyncio.sleep(0.01)

    await asyncio.gather(work(), work())
    done = await _bulk_done(tenant, request["request_id"])
    again = await _ok(await tenant.admin.post("/v1/actions/bulk", json=request))  # same id: same request, 200
    assert again == done
    reused = _problem(await tenant.admin.post("/v1/actions/bulk", json={**request, "operation": "delete"}),
                      409)
    assert reused["field"] == "request_id"

    async with aq.service.uow() as uow:
        actions = {a.id: a for a in await uow.actions.get_many(tenant.name, ids)}
    reserved_by_agent = {i for i, a in actions.items() if a.status is ActionStatus.RESERVED
                         and a.reserved_by == agent}
    moved = {i for i, a in actions.items() if a.assignee_user_id == other}
    # Every action was either moved, or kept because the agent held it; never both, never neither.
    assert moved.isdisjoint(reserved_by_agent)
    assert moved | reserved_by_agent == set(ids)
    assert {str(i) for i in reserved_by_agent} <= set(worked)
    assert (done["matched"], done["changed"], done["unchanged"]) == (1200, len(moved), len(reserved_by_agent))
    assert all(a.version == 2 and a.history[-1].reason == "reassigned from "
               f"{agent} to {other}: Ada is out of office" for a in actions.values() if a.id in moved)
    # one ActionReassigned per moved action, with the next sequence
    await aq.recorder_caught_up()
    sample = next(iter(moved))
    events = await eventually(lambda: aq.recorder.about(topics.ACTION_LIFECYCLE, sample, "ActionReassigned"),
                              what="ActionReassigned published")
    assert [(e["sequence"], e["data"]["previous_assignee_user_id"]) for e in events] == [(2, str(agent))]


async def test_bulk_delete_and_snooze_and_who_may_ask(aq: Harness, tenant: Tenant) -> None:
    agent = tenant.users["agent"]
    workflow_id = uuid.uuid4()
    ids = await _insert(aq, tenant.name, 30, agent, workflow_id=workflow_id)
    body = {"request_id": f"bulk-{uuid.uuid4()}", "operation": "delete",
            "filter": {"workflow_id": str(workflow_id)}}
    _problem(await tenant.agent.post("/v1/actions/bulk", json=body), 403)
    intruder = await Tenant.create(aq)
    # the same request id in another tenant is another request, and matches none of our actions
    await _ok(await intruder.admin.post("/v1/actions/bulk", json=body), 202)
    assert (await _bulk_done(intruder, body["request_id"]))["matched"] == 0
    _problem(await tenant.admin.get(f"/v1/actions/bulk/{uuid.uuid4()}"), 404)
    missing = _problem(await tenant.admin.post("/v1/actions/bulk", json={
        "request_id": "snooze-1", "operation": "snooze"}), 422)
    assert missing["field"] == "until"

    until = datetime.now(UTC) + timedelta(days=1)
    snooze = {"request_id": f"snooze-{uuid.uuid4()}", "operation": "snooze", "until": until.isoformat(),
              "filter": {"workflow_id": str(workflow_id)}}
    await _ok(await tenant.admin.post("/v1/actions/bulk", json=snooze), 202)
    assert (await _bulk_done(tenant, snooze["request_id"]))["changed"] == 30
    await _ok(await tenant.admin.post("/v1/actions/bulk", json=body), 202)
    assert (await _bulk_done(tenant, body["request_id"]))["changed"] == 30
    listed = await _ok(await tenant.admin.get("/v1/actions", params={
        "workflow_id": str(workflow_id), "status": "deleted", "limit": 100}))
    assert {i["id"] for i in listed["items"]} == {str(i) for i in ids}
    assert all(i["version"] == 3 for i in listed["items"])


# --- checks at the moment of work --------------------------------------------------------------


def _zone_where_it_is_night(now: datetime) -> str:
    """An Etc/GMT zone whose local time is now between 23:00 and 23:59 (inside 21:00 to 08:00)."""
    offset = (23 - now.hour) % 24
    if offset > 14:
        offset -= 24
    # Etc/GMT-N is UTC+N (POSIX sign)
    return "Etc/GMT" + (f"-{offset}" if offset > 0 else f"+{-offset}" if offset < 0 else "")


async def test_contact_updates_block_work_at_the_moment_it_starts(aq: Harness, tenant: Tenant) -> None:
    from aq_factories import wrap

    from manual_actions.contracts.messages import ChannelFlags, ContactUpdated

    opted_out = await tenant.queue(priority=9)
    at_night = await tenant.queue(priority=5)
    fine = await tenant.queue(priority=1)

    async def update(action_id: uuid.UUID, **changes: Any) -> Any:
        snapshot = (await _ok(await tenant.admin.get(f"/v1/actions/{action_id}")))["contact"]
        fields: dict[str, Any] = {"opted_out": ChannelFlags(), "do_not_disturb": ChannelFlags(), **changes}
        payload = ContactUpdated(contact_id=uuid.UUID(snapshot["id"]), name=snapshot["name"],
                                 phone=snapshot["phone"], updated_at=datetime.now(UTC), **fields)
        return await aq.produce(wrap(payload, tenant=tenant.name, subject=payload.contact_id, sequence=3),
                                topic=topics.CONTACTS)

    sent = [await update(opted_out, opted_out=ChannelFlags(sms=True)),
            await update(at_night, timezone=_zone_where_it_is_night(datetime.now(UTC)))]
    await aq.wait_consumed(*sent)

    reserved = await _ok(await tenant.agent.post("/v1/queue/next"))
    assert reserved["id"] == str(fine)
    skipped = await _ok(await tenant.admin.get(f"/v1/actions/{opted_out}"))
    assert (skipped["status"], skipped["status_reason"]) == ("skipped", "the contact opted out of SMS")
    night = await _ok(await tenant.admin.get(f"/v1/actions/{at_night}"))
    assert night["status"] == "skipped" and night["status_reason"].startswith("quiet hours: it is 23:")
    events = await eventually(lambda: aq.recorder.about(topics.ACTION_LIFECYCLE, opted_out, "ActionSkipped"),
                              what="ActionSkipped for the opted-out contact")
    assert [(e["sequence"], e["data"]["reason"], e["data"]["skipped_by"]) for e in events] == [
        (2, "the contact opted out of SMS", None)]
