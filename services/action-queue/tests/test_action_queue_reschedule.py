"""Bulk reschedule over a filter (overdue actions given a new due time) while an agent works the queue,
against the real Kafka and PostgreSQL: chunked, idempotent by request id, actions someone holds are
left alone, the others get the new due time (ActionRescheduled), scheduled SMS go out at the new time
instead (ActionScheduled); every change is one lifecycle event."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aq_factories import action_queued
from aq_harness import Harness, eventually
from test_action_queue_integration import Tenant, _problem

from action_queue.domain import ActionStatus, ManualAction
from manual_actions.contracts import topics

pytestmark = pytest.mark.integration


@pytest.fixture
async def tenant(aq: Harness) -> Tenant:
    return await Tenant.create(aq)


async def test_bulk_reschedule_of_overdue_actions_while_an_agent_works(aq: Harness, tenant: Tenant) -> None:
    agent = tenant.users["agent"]
    now = datetime.now(UTC)
    base = now - timedelta(hours=2)
    overdue = [ManualAction.from_queued(tenant.name, action_queued(
        assignee=agent, queued_at=base + timedelta(milliseconds=i), due_at=now - timedelta(minutes=30)),
        sequence=1) for i in range(700)]  # the fixture's chunk is 500: two chunks
    on_time = [ManualAction.from_queued(tenant.name, action_queued(
        assignee=agent, queued_at=base, due_at=now + timedelta(days=3)), sequence=1) for _ in range(20)]
    async with aq.service.uow() as uow:
        for action in overdue + on_time:
            assert await uow.actions.add_if_absent(action)
        await uow.commit()
    # One overdue SMS is scheduled already: rescheduling moves its send time.
    scheduled_id = overdue[-1].id
    first_send = now + timedelta(hours=1)
    response = await tenant.agent.post(f"/v1/actions/{scheduled_id}/schedule-sms",
                                       json={"send_at": first_send.isoformat()})
    assert response.status_code == 200, response.text

    until = now + timedelta(days=1)
    request = {"request_id": f"resched-{uuid.uuid4()}", "operation": "reschedule", "until": until.isoformat(),
               "filter": {"overdue": True}, "reason": "moved to tomorrow"}
    accepted = await tenant.admin.post("/v1/actions/bulk", json=request)
    assert accepted.status_code == 202, accepted.text

    worked: list[str] = []

    async def work() -> None:  # the agent keeps taking actions (Let's Start) while the request runs
        for _ in range(30):
            taken = await tenant.agent.post("/v1/queue/next")
            if taken.status_code == 204:
                return
            worked.append(taken.json()["id"])
            await asyncio.sleep(0.01)

    async def done() -> dict[str, Any] | None:
        body: dict[str, Any] = (await tenant.admin.get(f"/v1/actions/bulk/{request['request_id']}")).json()
        return body if body["status"] == "done" else None

    await asyncio.gather(work(), work())
    result = await eventually(done, what="bulk reschedule done", within=60)
    again = await tenant.admin.post("/v1/actions/bulk", json=request)
    assert again.status_code == 200 and again.json() == result
    assert _problem(await tenant.admin.post("/v1/actions/bulk", json={**request, "until": (
        until + timedelta(hours=1)).isoformat()}), 409)["field"] == "request_id"

    async with aq.service.uow() as uow:
        after = {a.id: a for a in await uow.actions.get_many(tenant.name, [a.id for a in overdue + on_time])}
    late = {a.id for a in overdue} - {scheduled_id}
    moved_due = {i for i in late if after[i].due_at == until}
    held = late - moved_due
    # Left alone only because the agent held them; every other overdue action got the new due time
    # whatever it went on to (the agent may take one after it was rescheduled).
    assert all(after[i].status is ActionStatus.RESERVED and str(i) in worked for i in held)
    assert all(after[i].status in (ActionStatus.QUEUED, ActionStatus.RESERVED) for i in moved_due)
    assert not any(after[i].status is ActionStatus.SNOOZED for i in late)
    moved = after[scheduled_id]
    assert (moved.status, moved.send_at, moved.due_at) == (
        ActionStatus.SCHEDULED, until, overdue[-1].due_at)  # its send time moves, not its due time
    # Not overdue: untouched by the request (the agent may have taken some after the overdue ones).
    assert all(after[a.id].status in (ActionStatus.QUEUED, ActionStatus.RESERVED)
               and after[a.id].due_at == a.due_at for a in on_time)
    assert (result["matched"], result["changed"], result["unchanged"]) == (
        700, len(moved_due) + 1, len(held))
    # Due tomorrow now, they still come before the on-time actions (due in three days): the next Let's
    # Start hands out one of them.
    sample = next(i for i in moved_due if after[i].status is ActionStatus.QUEUED)
    events = await eventually(lambda: aq.recorder.about(topics.ACTION_LIFECYCLE, sample, "ActionRescheduled"),
                              what="ActionRescheduled published")
    assert [(e["sequence"], e["data"]["reason"], e["data"]["rescheduled_by"]) for e in events] == [
        (2, "moved to tomorrow", None)]
    assert datetime.fromisoformat(events[0]["data"]["due_at"]) == until
    assert datetime.fromisoformat(events[0]["data"]["previous_due_at"]) == now - timedelta(minutes=30)
    assert aq.recorder.about(topics.ACTION_LIFECYCLE, sample, "ActionSnoozed") == []
    taken = await tenant.agent.post("/v1/queue/next")
    assert taken.status_code == 200, taken.text
    assert uuid.UUID(taken.json()["id"]) in moved_due
    rescheduled = await eventually(
        lambda: aq.recorder.about(topics.ACTION_LIFECYCLE, scheduled_id, "ActionScheduled")[1:],
        what="the second ActionScheduled")
    assert datetime.fromisoformat(rescheduled[0]["data"]["send_at"]) == until


async def test_reschedule_needs_a_future_time(aq: Harness, tenant: Tenant) -> None:
    past = await tenant.admin.post("/v1/actions/bulk", json={
        "request_id": "r-past", "operation": "reschedule",
        "until": (datetime.now(UTC) - timedelta(minutes=1)).isoformat()})
    assert _problem(past, 422)["field"] == "until"
    assert _problem(await tenant.agent.post("/v1/actions/bulk", json={
        "request_id": "r-agent", "operation": "reschedule",
        "until": (datetime.now(UTC) + timedelta(days=1)).isoformat()}), 403)
