"""A fresh consumer of action-lifecycle rebuilds exactly what action-queue holds in PostgreSQL.

A scripted mix of transitions goes through the real HTTP API, the real consumer (SMS and call
results) and the outbox relay; then a group-less consumer reads the whole topic from the
beginning, ``rebuild`` folds the test tenant's events, and every action must equal the database's.
Also checks each transition endpoint's answer and the cross-tenant denial on every new endpoint.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aq_factories import wrap
from aq_harness import Harness, eventually
from test_action_queue_integration import Tenant, _problem

from action_queue.domain import ActionStatus, ManualAction
from action_queue.domain.rebuild import rebuild
from action_queue.handlers.ports import ActionFilter
from manual_actions.contracts import (
    ActionType,
    CallCompleted,
    Envelope,
    InvalidMessage,
    SmsFailed,
    SmsSent,
    decode,
    registry,
    topics,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def tenant(aq: Harness) -> Tenant:
    return await Tenant.create(aq)


async def _ok(response: Any, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


async def _command(aq: Harness, topic: str, action_id: uuid.UUID, index: int = -1) -> dict[str, Any]:
    commands = await eventually(lambda: aq.recorder.about(topic, action_id), what=f"a command on {topic}")
    command: dict[str, Any] = commands[index]
    return command


async def _stored(aq: Harness, tenant: str) -> dict[uuid.UUID, ManualAction]:
    async with aq.service.uow() as uow:
        ids = await uow.actions.matching_ids(tenant, ActionFilter(statuses=tuple(ActionStatus)), after=None,
                                             limit=10_000)
        actions = await uow.actions.get_many(tenant, ids)  # whole domain objects, history included
    return {a.id: a for a in actions}


async def _read_whole_topic(bootstrap: str, until: dict[uuid.UUID, int]) -> list[Envelope[Any]]:
    """Every decodable envelope on action-lifecycle, read from the beginning by a new group-less
    consumer, until each action in ``until`` has shown the sequence it maps to."""
    consumer = AIOKafkaConsumer(topics.ACTION_LIFECYCLE, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    envelopes: list[Envelope[Any]] = []
    seen: dict[uuid.UUID, int] = {}
    try:
        async def caught_up() -> bool:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    try:
                        envelope = decode(record.value)
                    except InvalidMessage:
                        continue  # other tests' poison messages
                    envelopes.append(envelope)
                    subject = uuid.UUID(envelope.subject) if len(envelope.subject) == 36 else None
                    if subject in until:
                        seen[subject] = max(seen.get(subject, 0), envelope.sequence)
            return all(seen.get(action_id, 0) >= version for action_id, version in until.items())

        await eventually(caught_up, what="every action's last event on action-lifecycle", within=60)
    finally:
        await consumer.stop()
    return envelopes


async def test_a_fresh_consumer_rebuilds_every_action_exactly(aq: Harness, tenant: Tenant) -> None:
    other = tenant.users["other_agent"]
    now = datetime.now(UTC)
    sms_ids = [await tenant.queue(queued_at=now - timedelta(minutes=10 - i), priority=5) for i in range(6)]
    call_ids = [await tenant.queue(action_type=ActionType.CALL, queued_at=now - timedelta(minutes=3 - i))
                for i in range(2)]
    untouched = await tenant.queue(assignee=other)

    # Let's Start hands out the highest priority, oldest first; then renew, give back, take again.
    first = await _ok(await tenant.agent.post("/v1/queue/next"))
    assert first["id"] == str(sms_ids[0])
    renewed = await _ok(await tenant.agent.post(f"/v1/actions/{sms_ids[0]}/lease"))
    assert renewed["lease_expires_at"] > first["lease_expires_at"]
    _problem(await tenant.other_agent.post(f"/v1/actions/{sms_ids[0]}/lease"), 404)  # not theirs
    released = await _ok(await tenant.agent.post(f"/v1/actions/{sms_ids[0]}/release"))
    assert (released["status"], released["reserved_by"]) == ("queued", None)
    assert (await _ok(await tenant.agent.post("/v1/queue/next")))["id"] == str(sms_ids[0])

    # send it: SmsSent completes it
    await _ok(await tenant.agent.post(f"/v1/actions/{sms_ids[0]}/send-sms", json={"body": "Edited"}), 202)
    command = await _command(aq, topics.SMS_COMMANDS, sms_ids[0])
    sent = SmsSent(command_id=uuid.UUID(command["data"]["command_id"]), action_id=sms_ids[0],
                   message_sid="SM" + "e" * 32, to="+14155550100", delivery_status="sent",
                   sent_at=datetime.now(UTC))
    await aq.produce(wrap(sent, tenant=tenant.name, subject=sms_ids[0], source="sms-sender"),
                     topic=topics.SMS_RESULTS)

    # send one that fails: back in the queue with the reason
    await _ok(await tenant.agent.post(f"/v1/actions/{sms_ids[1]}/send-sms"), 202)
    command = await _command(aq, topics.SMS_COMMANDS, sms_ids[1])
    failed = SmsFailed(command_id=uuid.UUID(command["data"]["command_id"]), action_id=sms_ids[1],
                       reason="Carrier unreachable", error_code=30003, failed_at=datetime.now(UTC))
    await aq.produce(wrap(failed, tenant=tenant.name, subject=sms_ids[1], source="sms-sender"),
                     topic=topics.SMS_RESULTS)

    # snooze, skip, reassign, schedule then cancel, schedule and keep
    until = (now + timedelta(hours=2)).isoformat()
    snoozed = await _ok(await tenant.agent.post(f"/v1/actions/{sms_ids[2]}/snooze",
                                                json={"until": until, "reason": "after lunch"}))
    assert (snoozed["status"], snoozed["status_reason"]) == ("snoozed", "after lunch")
    # reschedule: the snoozed one gets a due time; a call gets one and then loses it (as soon as possible)
    due = (now + timedelta(days=1)).isoformat()
    rescheduled = await _ok(await tenant.agent.post(f"/v1/actions/{sms_ids[2]}/reschedule",
                                                    json={"due_at": due, "reason": "Thursday"}))
    assert (rescheduled["status"], rescheduled["due_at"] is not None) == ("snoozed", True)
    await _ok(await tenant.admin.post(f"/v1/actions/{call_ids[1]}/reschedule", json={"due_at": due}))
    await _ok(await tenant.agent.post(f"/v1/actions/{call_ids[1]}/reschedule", json={"due_at": None}))
    skipped = await _ok(await tenant.agent.post(f"/v1/actions/{sms_ids[3]}/skip",
                                                json={"reason": "duplicate"}))
    assert (skipped["status"], skipped["status_reason"]) == ("skipped", "duplicate")
    _problem(await tenant.agent.post(f"/v1/actions/{sms_ids[4]}/reassign",
                                     json={"assignee_user_id": str(other)}), 403)
    moved = await _ok(await tenant.admin.post(f"/v1/actions/{sms_ids[4]}/reassign",
                                              json={"assignee_user_id": str(other), "reason": "vacation"}))
    assert moved["assignee_user_id"] == str(other)
    local = (now + timedelta(days=1)).astimezone().replace(tzinfo=None, microsecond=0)
    scheduled = await _ok(await tenant.agent.post(f"/v1/actions/{sms_ids[5]}/schedule-sms", json={
        "send_at": local.isoformat(), "timezone": "America/Chicago", "body": "Tomorrow then"}))
    assert scheduled["status"] == "scheduled"
    assert datetime.fromisoformat(scheduled["send_at"]).utcoffset() is not None
    bad_zone = _problem(await tenant.agent.post(
        f"/v1/actions/{sms_ids[5]}/schedule-sms",
        json={"send_at": local.isoformat(), "timezone": "Mars/Base"}), 422)
    assert bad_zone["field"] == "body.timezone"
    assert (await _ok(await tenant.agent.delete(f"/v1/actions/{sms_ids[5]}/schedule")))["status"] == "queued"
    await _ok(await tenant.agent.post(f"/v1/actions/{sms_ids[5]}/schedule-sms", json={
        "send_at": (now + timedelta(hours=5)).isoformat()}))

    # a call: placed, ended, outcome recorded; another call deleted
    await _ok(await tenant.agent.post(f"/v1/actions/{call_ids[0]}/call",
                                      json={"agent_phone": "+14155550199"}), 202)
    command = await _command(aq, topics.CALL_COMMANDS, call_ids[0])
    ended = CallCompleted(command_id=uuid.UUID(command["data"]["command_id"]), action_id=call_ids[0],
                          call_status="completed", duration_seconds=61, ended_at=datetime.now(UTC))
    await aq.produce(wrap(ended, tenant=tenant.name, subject=call_ids[0], source="dialer"),
                     topic=topics.CALL_RESULTS)
    await tenant.status_becomes(call_ids[0], "awaiting_outcome")
    await _ok(await tenant.agent.post(f"/v1/actions/{call_ids[0]}/complete", json={"outcome": "connected"}))
    await _ok(await tenant.admin.delete(f"/v1/actions/{call_ids[1]}", params={"reason": "mistake"}))
    await tenant.status_becomes(sms_ids[0], "completed")
    await tenant.status_becomes(sms_ids[1], "queued")

    stored = await _stored(aq, tenant.name)
    assert set(stored) == {*sms_ids, *call_ids, untouched}
    rebuilt = rebuild(await _read_whole_topic(aq.bootstrap, {a.id: a.version for a in stored.values()}),
                      tenant=tenant.name)
    assert set(rebuilt) == set(stored)
    for action_id, action in stored.items():
        assert rebuilt[action_id] == action, action_id
    assert {a.status for a in stored.values()} == {
        ActionStatus.COMPLETED, ActionStatus.QUEUED, ActionStatus.SNOOZED, ActionStatus.SKIPPED,
        ActionStatus.SCHEDULED, ActionStatus.DELETED}
    assert stored[sms_ids[1]].last_error == "Carrier unreachable"
    assert stored[sms_ids[2]].due_at == datetime.fromisoformat(due) and stored[call_ids[1]].due_at is None
    # and everything action-queue wrote validates against the registry
    await aq.recorder_caught_up()
    ours = [e for e in aq.recorder.envelopes(topics.ACTION_LIFECYCLE)
            if e.get("tenant") == tenant.name and e.get("source") == "action-queue"]
    assert {e["type"] for e in ours} >= {
        "ActionReserved", "ActionReleased", "ActionSmsRequested", "ActionCompleted", "ActionRequeued",
        "ActionSnoozed", "ActionSkipped", "ActionReassigned", "ActionScheduled", "ActionCallRequested",
        "ActionCallEnded", "ActionDeleted", "ActionRescheduled"}
    for document in ours:
        assert registry.validate_envelope(document, topics.ACTION_LIFECYCLE) == [], document


async def test_transition_endpoints_deny_other_tenants(aq: Harness, tenant: Tenant) -> None:
    action_id = await tenant.queue()
    intruder = await Tenant.create(aq)
    until = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    for method, path, body in [
        ("post", "lease", None), ("post", "release", None), ("post", "skip", {"reason": "x"}),
        ("post", "snooze", {"until": until}), ("post", "reassign", {"assignee_user_id": str(uuid.uuid4())}),
        ("post", "schedule-sms", {"send_at": until}), ("delete", "schedule", None),
        ("post", "reschedule", {"due_at": until}),
    ]:
        url = f"/v1/actions/{action_id}/{path}"
        client = intruder.admin
        response = await (client.post(url, json=body) if method == "post" else client.delete(url))
        _problem(response, 404)
    assert (await tenant.agent.get(f"/v1/actions/{action_id}")).json()["version"] == 1
