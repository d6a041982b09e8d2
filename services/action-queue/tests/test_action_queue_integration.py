"""action-queue against the real Kafka and PostgreSQL: materialisation, dead letters, Let's Start
under concurrency, commands through the outbox, results from the Twilio-facing services, and the
HTTP rules (tenancy, visibility, problem+json)."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aq_factories import action_queued, wrap
from aq_harness import Harness, eventually

from action_queue.adapters.sql import SqlUnitOfWork
from action_queue.domain import Actor
from action_queue.handlers import queue
from manual_actions.auth import Role
from manual_actions.contracts import (
    ActionType,
    CallCompleted,
    SmsFailed,
    SmsSent,
    dead_letters,
    registry,
    topics,
)

pytestmark = pytest.mark.integration


class Tenant:
    """A fresh tenant with an admin, two agents and their HTTP clients."""

    def __init__(self, aq: Harness, name: str, tokens: dict[str, str], users: dict[str, uuid.UUID]) -> None:
        self.aq = aq
        self.name = name
        self.users = users
        self.admin = aq.client(tokens["admin"])
        self.agent = aq.client(tokens["agent"])
        self.other_agent = aq.client(tokens["other_agent"])

    @classmethod
    async def create(cls, aq: Harness) -> Tenant:
        name = await aq.new_tenant()
        users = {"agent": uuid.uuid4(), "other_agent": uuid.uuid4()}
        tokens = {
            "admin": await aq.token(name, Role.ADMIN),
            "agent": await aq.token(name, Role.AGENT, users["agent"]),
            "other_agent": await aq.token(name, Role.AGENT, users["other_agent"]),
        }
        return cls(aq, name, tokens, users)

    async def queue(self, **kwargs: Any) -> uuid.UUID:
        """Produce an ActionQueued (assigned to ``agent`` unless told) and wait until it is listed."""
        event = action_queued(**{"assignee": self.users["agent"], **kwargs})
        await self.aq.produce(wrap(event, tenant=self.name, subject=event.action_id))
        await self.listed(event.action_id)
        return event.action_id

    async def listed(self, action_id: uuid.UUID) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            response = await self.admin.get(f"/v1/actions/{action_id}")
            return response.json() if response.status_code == 200 else None

        result: dict[str, Any] = await eventually(probe, what=f"action {action_id} materialised")
        return result

    async def status_becomes(self, action_id: uuid.UUID, status: str) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            body = (await self.admin.get(f"/v1/actions/{action_id}")).json()
            return body if body["status"] == status else None

        result: dict[str, Any] = await eventually(probe, what=f"action {action_id} {status}")
        return result


@pytest.fixture
async def tenant(aq: Harness) -> Tenant:
    return await Tenant.create(aq)


async def assert_published_per_registry(aq: Harness, action_id: uuid.UUID) -> None:
    """Everything action-queue wrote about ``action_id`` validates against the contract registry
    on the topic it was written to."""
    await aq.recorder_caught_up()
    ours = [(r.topic, json.loads(r.value)) for r in aq.recorder.records
            if r.topic != topics.DEAD_LETTERS and r.key == str(action_id).encode() and r.value is not None]
    ours = [(topic, doc) for topic, doc in ours if doc.get("source") == "action-queue"]
    assert ours, "action-queue published nothing about this action"
    for topic, doc in ours:
        assert registry.validate_envelope(doc, topic) == [], (topic, doc)


def _problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    return body


# --- materialisation ---------------------------------------------------------------------------


async def test_action_queued_appears_once_even_when_produced_twice(aq: Harness, tenant: Tenant) -> None:
    workflow_id = uuid.uuid4()
    event = action_queued(assignee=tenant.users["agent"], workflow_id=workflow_id)
    envelope = wrap(event, tenant=tenant.name, subject=event.action_id)
    sent = [await aq.produce(envelope), await aq.produce(envelope),
            # the same action again in a new envelope (a retried publication with a fresh id)
            await aq.produce(wrap(event, tenant=tenant.name, subject=event.action_id))]
    await aq.wait_consumed(*sent)

    response = await tenant.agent.get("/v1/actions", params={"workflow_id": str(workflow_id)})
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [item["id"] for item in items] == [str(event.action_id)]
    item = items[0]
    assert item["status"] == "queued"
    assert item["type"] == "sms"
    assert item["version"] == 1
    assert item["tenant"] == tenant.name
    assert item["assignee_user_id"] == str(tenant.users["agent"])
    assert item["contact"] == {"id": str(event.contact.contact_id), "name": "Ada Lovelace",
                               "phone": "+14155550100"}
    assert item["message"] == event.message
    # and none of the copies was dead-lettered: they were recognised as duplicates
    await aq.recorder_caught_up()
    assert [r for r in aq.recorder.records
            if r.topic == topics.DEAD_LETTERS and r.key == str(event.action_id).encode()] == []


async def test_poison_message_is_dead_lettered_and_the_next_one_materialised(
    aq: Harness, tenant: Tenant
) -> None:
    poison_key = f"poison-{uuid.uuid4()}".encode()
    unknown_action = uuid.uuid4()
    unprocessable = wrap(SmsSent(command_id=uuid.uuid4(), action_id=unknown_action,
                                 message_sid="SM" + "b" * 32, to="+14155550100", delivery_status="sent",
                                 sent_at=datetime.now(UTC)),
                         tenant=tenant.name, subject=unknown_action, source="sms-sender")
    good = action_queued(assignee=tenant.users["agent"])
    # Same partition, so the good message comes after the bad ones in the same log.
    poison = await aq.produce_raw(b"{not json", poison_key, partition=0)
    bad_result = await aq.produce(unprocessable, topic=topics.SMS_RESULTS, partition=0)
    after = await aq.produce(wrap(good, tenant=tenant.name, subject=good.action_id), partition=0)
    await tenant.listed(good.action_id)
    await aq.wait_consumed(poison, bad_result, after)

    group = aq.settings.consumer_group_id.encode()

    def dead_letter_for(key: bytes) -> Any:
        return next((r for r in aq.recorder.records if r.topic == topics.DEAD_LETTERS and r.key == key
                     and dict(r.headers).get(dead_letters.CONSUMER_GROUP) == group), None)

    letter = await eventually(lambda: dead_letter_for(poison_key), what="the poison message dead-lettered")
    assert letter.value == b"{not json"
    info = dead_letters.parse_dead_letter_headers(letter.headers)
    assert (info.original_topic, info.original_partition, info.original_offset) == (
        topics.ACTION_LIFECYCLE, 0, poison.offset)
    assert "JSON" in info.reason
    letter = await eventually(lambda: dead_letter_for(str(unknown_action).encode()),
                              what="the SmsSent for an unknown action dead-lettered")
    assert "unknown action" in dead_letters.parse_dead_letter_headers(letter.headers).reason


# --- Let's Start -------------------------------------------------------------------------------


async def test_concurrent_queue_next_never_hands_out_the_same_action(aq: Harness, tenant: Tenant) -> None:
    count = 300
    base = datetime.now(UTC) - timedelta(days=1)
    events = [action_queued(assignee=tenant.users["agent"], priority=i % 3,
                            queued_at=base + timedelta(seconds=i)) for i in range(count)]
    sent = await asyncio.gather(*(aq.produce(wrap(e, tenant=tenant.name, subject=e.action_id))
                                  for e in events))
    await aq.wait_consumed(*sent)

    async def next_id() -> str | None:
        response = await tenant.agent.post("/v1/queue/next")
        if response.status_code == 204:
            return None
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "reserved" and body["reserved_by"] == str(tenant.users["agent"])
        return str(body["id"])

    handed_out: list[str] = []
    for _ in range(count // 2):  # two concurrent callers, a few hundred times
        first, second = await asyncio.gather(next_id(), next_id())
        assert first is not None and second is not None
        assert first != second
        handed_out += [first, second]
    assert len(set(handed_out)) == count
    assert set(handed_out) == {str(e.action_id) for e in events}
    # priority first: the first 100 handed out (50 rounds) are exactly the 100 of priority 2
    assert set(handed_out[:100]) == {str(e.action_id) for e in events if e.priority == 2}
    empty = await tenant.agent.post("/v1/queue/next")
    assert empty.status_code == 204 and empty.content == b""


async def test_a_lapsed_lease_makes_the_action_available_again(aq: Harness, tenant: Tenant) -> None:
    action_id = await tenant.queue()
    first = await tenant.agent.post("/v1/queue/next")
    assert first.json()["id"] == str(action_id)
    assert (await tenant.agent.post("/v1/queue/next")).status_code == 204
    # The HTTP app uses the wall clock; drive the same use case on the real database 5 minutes on.
    actor = Actor(tenant.name, tenant.users["agent"], supervisor=False)
    later = datetime.now(UTC) + timedelta(minutes=5, seconds=1)
    again = await queue.reserve_next(SqlUnitOfWork(aq.service.uow.engine), actor, now=later)
    assert again is not None and again.id == action_id
    assert again.lease_expires_at == later + timedelta(minutes=5)


# --- SMS ---------------------------------------------------------------------------------------


async def test_send_sms_then_sms_sent_completes_and_publishes_action_completed(
    aq: Harness, tenant: Tenant
) -> None:
    action_id = await tenant.queue()
    response = await tenant.agent.post(f"/v1/actions/{action_id}/send-sms", json={"body": "Hi Ada, edited"})
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "sending"

    [command] = await eventually(lambda: aq.recorder.about(topics.SMS_COMMANDS, action_id),
                                 what="SendSms on sms-commands")
    assert command["type"] == "SendSms"
    assert command["source"] == "action-queue"
    assert command["tenant"] == tenant.name
    assert command["sequence"] == 1
    data = command["data"]
    assert data["action_id"] == str(action_id)
    assert data["to"] == "+14155550100"
    assert data["body"] == "Hi Ada, edited"
    assert data["requested_by"] == str(tenant.users["agent"])
    uuid.UUID(data["command_id"])

    result = wrap(SmsSent(command_id=uuid.UUID(data["command_id"]), action_id=action_id,
                          message_sid="SM" + "c" * 32, to="+14155550100", delivery_status="delivered",
                          sent_at=datetime.now(UTC)),
                  tenant=tenant.name, subject=action_id, source="sms-sender")
    await aq.produce(result, topic=topics.SMS_RESULTS)
    done = await tenant.status_becomes(action_id, "completed")
    assert done["outcome"] == "sent"
    assert done["version"] == 3  # 1 ActionQueued, 2 ActionSmsRequested, 3 ActionCompleted
    assert [h["to"] for h in done["history"]] == ["queued", "sending", "completed"]

    def completions() -> list[dict[str, Any]]:
        return aq.recorder.about(topics.ACTION_LIFECYCLE, action_id, "ActionCompleted")

    [completed] = await eventually(completions, what="ActionCompleted on action-lifecycle")
    assert completed["sequence"] == 3
    [requested] = aq.recorder.about(topics.ACTION_LIFECYCLE, action_id, "ActionSmsRequested")
    assert (requested["sequence"], requested["data"]["command_id"]) == (2, data["command_id"])
    assert completed["source"] == "action-queue"
    assert completed["tenant"] == tenant.name
    assert completed["causation_id"] == str(result.id)
    assert completed["data"]["outcome"] == "sent"
    # A redelivered SmsSent (same envelope id) changes nothing, nor does our own ActionCompleted
    # read back from action-lifecycle.
    await aq.wait_consumed(await aq.produce(result, topic=topics.SMS_RESULTS))
    await aq.recorder_caught_up()
    assert len(completions()) == 1
    assert (await tenant.admin.get(f"/v1/actions/{action_id}")).json()["version"] == 3
    await assert_published_per_registry(aq, action_id)


async def test_sms_failed_puts_the_action_back_with_the_reason(aq: Harness, tenant: Tenant) -> None:
    action_id = await tenant.queue()
    assert (await tenant.agent.post(f"/v1/actions/{action_id}/send-sms")).status_code == 202
    [command] = await eventually(lambda: aq.recorder.about(topics.SMS_COMMANDS, action_id),
                                 what="SendSms on sms-commands")
    failed = wrap(SmsFailed(command_id=uuid.UUID(command["data"]["command_id"]), action_id=action_id,
                            reason="The 'To' number is not a valid phone number.", error_code=21211,
                            failed_at=datetime.now(UTC)),
                  tenant=tenant.name, subject=action_id, source="sms-sender")
    await aq.produce(failed, topic=topics.SMS_RESULTS)
    back = await tenant.status_becomes(action_id, "queued")
    assert back["last_error"] == "The 'To' number is not a valid phone number."
    listed = (await tenant.agent.get("/v1/actions", params={"status": "queued"})).json()["items"]
    assert [i["last_error"] for i in listed if i["id"] == str(action_id)] == [back["last_error"]]
    [requeued] = await eventually(
        lambda: aq.recorder.about(topics.ACTION_LIFECYCLE, action_id, "ActionRequeued"),
        what="ActionRequeued on action-lifecycle")
    assert requeued["sequence"] == 3
    assert requeued["data"]["last_error"] == back["last_error"]
    assert requeued["causation_id"] == str(failed.id)


async def test_send_sms_without_contact_phone_skips_the_action_with_the_reason(tenant: Tenant) -> None:
    # a number check at the moment of work (decision 0012): the action is skipped, never silently
    action_id = await tenant.queue(phone=None)
    body = _problem(await tenant.agent.post(f"/v1/actions/{action_id}/send-sms", json={}), 409)
    assert (body["action_status"], body["reason"]) == ("skipped", "the contact has no phone number")
    action = (await tenant.agent.get(f"/v1/actions/{action_id}")).json()
    assert (action["status"], action["status_reason"]) == ("skipped", "the contact has no phone number")
    assert action["history"][-1]["by"] is None


async def test_an_sms_cannot_be_completed_by_hand_or_called(tenant: Tenant) -> None:
    action_id = await tenant.queue()
    completed = await tenant.agent.post(f"/v1/actions/{action_id}/complete", json={"outcome": "sent"})
    assert _problem(completed, 409)["action_status"] == "queued"
    called = await tenant.agent.post(f"/v1/actions/{action_id}/call", json={"agent_phone": "+14155550199"})
    _problem(called, 409)


# --- calls -------------------------------------------------------------------------------------


async def test_call_outcome_flow_and_missing_outcome_is_422(aq: Harness, tenant: Tenant) -> None:
    action_id = await tenant.queue(action_type=ActionType.CALL)
    missing_phone = _problem(await tenant.agent.post(f"/v1/actions/{action_id}/call", json={}), 422)
    assert missing_phone["errors"][0]["field"] == "agent_phone"
    placed = await tenant.agent.post(f"/v1/actions/{action_id}/call", json={"agent_phone": "+14155550199"})
    assert placed.status_code == 202, placed.text
    assert placed.json()["status"] == "calling"
    [command] = await eventually(lambda: aq.recorder.about(topics.CALL_COMMANDS, action_id),
                                 what="PlaceCall on call-commands")
    assert command["type"] == "PlaceCall"
    assert (command["data"]["to"], command["data"]["agent_phone"]) == ("+14155550100", "+14155550199")

    ended = wrap(CallCompleted(command_id=uuid.UUID(command["data"]["command_id"]), action_id=action_id,
                               call_sid="CA" + "d" * 32, call_status="no-answer", duration_seconds=0,
                               ended_at=datetime.now(UTC)),
                 tenant=tenant.name, subject=action_id, source="dialer")
    await aq.produce(ended, topic=topics.CALL_RESULTS)
    waiting = await tenant.status_becomes(action_id, "awaiting_outcome")
    assert waiting["call_status"] == "no-answer"

    missing = _problem(await tenant.agent.post(f"/v1/actions/{action_id}/complete", json={}), 422)
    assert [e["field"] for e in missing["errors"]] == ["body.outcome"]
    done = await tenant.agent.post(f"/v1/actions/{action_id}/complete",
                                   json={"outcome": "no_answer", "notes": "Try again Monday"})
    assert done.status_code == 200, done.text
    assert (done.json()["status"], done.json()["outcome"], done.json()["notes"]) == (
        "completed", "no_answer", "Try again Monday")
    completed = await eventually(
        lambda: aq.recorder.about(topics.ACTION_LIFECYCLE, action_id, "ActionCompleted"),
        what="ActionCompleted for the call")
    assert [(e["sequence"], e["data"]["outcome"], e["data"]["completed_by"]) for e in completed] == [
        (4, "no_answer", str(tenant.users["agent"]))]
    lifecycle = [(e["type"], e["sequence"]) for e in aq.recorder.about(topics.ACTION_LIFECYCLE, action_id)]
    assert lifecycle == [("ActionQueued", 1), ("ActionCallRequested", 2), ("ActionCallEnded", 3),
                         ("ActionCompleted", 4)]
    await assert_published_per_registry(aq, action_id)


# --- delete ------------------------------------------------------------------------------------


async def test_delete_by_the_assignee_publishes_action_deleted(aq: Harness, tenant: Tenant) -> None:
    action_id = await tenant.queue()
    deleted = await tenant.agent.delete(f"/v1/actions/{action_id}", params={"reason": "duplicate"})
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["status"] == "deleted"
    _problem(await tenant.admin.delete(f"/v1/actions/{action_id}"), 409)
    events = await eventually(lambda: aq.recorder.about(topics.ACTION_LIFECYCLE, action_id, "ActionDeleted"),
                              what="ActionDeleted on action-lifecycle")
    assert [(e["sequence"], e["data"]["reason"]) for e in events] == [(2, "duplicate")]
    # deleted actions leave the default list but can be asked for
    default = (await tenant.agent.get("/v1/actions")).json()["items"]
    assert str(action_id) not in [i["id"] for i in default]
    only_deleted = (await tenant.agent.get("/v1/actions", params={"status": "deleted"})).json()["items"]
    assert [i["id"] for i in only_deleted] == [str(action_id)]
    await assert_published_per_registry(aq, action_id)


# --- tenancy and visibility --------------------------------------------------------------------


async def test_another_tenants_action_is_404(aq: Harness, tenant: Tenant) -> None:
    action_id = await tenant.queue()
    intruder = await Tenant.create(aq)
    body = _problem(await intruder.admin.get(f"/v1/actions/{action_id}"), 404)
    assert body["action_id"] == str(action_id)
    _problem(await intruder.admin.post(f"/v1/actions/{action_id}/send-sms", json={}), 404)
    _problem(await intruder.admin.delete(f"/v1/actions/{action_id}"), 404)
    assert (await intruder.admin.get("/v1/actions")).json()["items"] == []
    assert (await tenant.agent.get(f"/v1/actions/{action_id}")).json()["status"] == "queued"


async def test_an_agent_gets_404_for_someone_elses_action(tenant: Tenant) -> None:
    action_id = await tenant.queue()
    _problem(await tenant.other_agent.get(f"/v1/actions/{action_id}"), 404)
    _problem(await tenant.other_agent.post(f"/v1/actions/{action_id}/send-sms", json={}), 404)
    _problem(await tenant.other_agent.delete(f"/v1/actions/{action_id}"), 404)
    assert (await tenant.other_agent.get("/v1/actions")).json()["items"] == []
    assert (await tenant.other_agent.post("/v1/queue/next")).status_code == 204
    assert (await tenant.agent.get(f"/v1/actions/{action_id}")).json()["status"] == "queued"


async def test_requests_without_a_valid_token_are_401(aq: Harness) -> None:
    async with aq.client("ma_0000000000000000_nope") as client:
        _problem(await client.get("/v1/actions"), 401)


# --- listing -----------------------------------------------------------------------------------


async def test_list_filters_and_keyset_pagination(tenant: Tenant) -> None:
    base = datetime.now(UTC) - timedelta(hours=1)
    workflow_id = uuid.uuid4()
    ids = [await tenant.queue(queued_at=base + timedelta(minutes=i), workflow_id=workflow_id,
                              contact_name=f"Grace Hopper {i}") for i in range(5)]
    call_id = await tenant.queue(action_type=ActionType.CALL, workflow_id=workflow_id,
                                 contact_name="Alan Turing", phone="+442071838750",
                                 queued_at=base + timedelta(minutes=10))
    others = await tenant.queue(assignee=tenant.users["other_agent"], workflow_id=workflow_id,
                                queued_at=base + timedelta(minutes=20))

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"workflow_id": str(workflow_id), "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await tenant.admin.get("/v1/actions", params=params)).json()
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [str(i) for i in [*ids, call_id, others]]

    async def listed(client: Any, **params: Any) -> list[str]:
        response = await client.get("/v1/actions", params={"workflow_id": str(workflow_id), **params})
        assert response.status_code == 200, response.text
        return [i["id"] for i in response.json()["items"]]

    assert await listed(tenant.admin, type="call") == [str(call_id)]
    assert await listed(tenant.admin, contact="turing") == [str(call_id)]
    assert await listed(tenant.admin, contact="20718") == [str(call_id)]
    assert await listed(tenant.admin, contact="hopper 3") == [str(ids[3])]
    assert await listed(tenant.admin, assignee_user_id=str(tenant.users["other_agent"])) == [str(others)]
    assert str(others) not in await listed(tenant.agent)
    assert await listed(tenant.agent, assignee_user_id=str(tenant.users["other_agent"])) == []
    assert await listed(tenant.admin, status="completed") == []
    assert len(await listed(tenant.admin, status=["queued", "reserved"])) == 7
    bad = _problem(await tenant.admin.get("/v1/actions", params={"cursor": "garbage"}), 422)
    assert bad["errors"][0]["field"] == "query.cursor"
    bad = _problem(await tenant.admin.get("/v1/actions", params={"status": "lost"}), 422)
    assert bad["errors"][0]["field"] == "query.status.0"
