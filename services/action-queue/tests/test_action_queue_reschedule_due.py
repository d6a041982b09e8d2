"""Rescheduling an action (changing its due time) as its own lifecycle event, ActionRescheduled.

Unit tests of the domain transition and of its fold; then, against the real Kafka and PostgreSQL,
``POST /v1/actions/{id}/reschedule``: it changes the order Let's Start hands actions out in, emits
exactly one ActionRescheduled with the next sequence, and is scoped like every other endpoint
(agents their own, managers their team's, admins the tenant's; 404 otherwise).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from aq_factories import T0, action_queued, wrap
from aq_harness import Harness, eventually
from test_action_queue_integration import Tenant, _problem
from test_action_queue_people import Team

from action_queue.domain import ActionStatus, InvalidField, InvalidTransition, ManualAction
from action_queue.domain.rebuild import rebuild
from manual_actions.contracts import ActionType, Envelope, decode, registry, topics
from manual_actions.contracts.messages import ActionRescheduled

AGENT = uuid.uuid4()
MANAGER = uuid.uuid4()
NOW = T0 + timedelta(hours=1)
LATER = NOW + timedelta(days=2)
PLUS_TWO = timezone(timedelta(hours=2))


def _action(action_type: ActionType = ActionType.SMS, **kwargs: Any) -> ManualAction:
    return ManualAction.from_queued("acme", action_queued(action_type=action_type, assignee=AGENT, **kwargs),
                                    sequence=1)


def _in(status: ActionStatus) -> ManualAction:
    action = _action(ActionType.CALL if status in (ActionStatus.CALLING, ActionStatus.AWAITING_OUTCOME)
                     else ActionType.SMS)
    if status is ActionStatus.RESERVED:
        action.reserve(AGENT, NOW)
    elif status is ActionStatus.SNOOZED:
        action.snooze(AGENT, NOW + timedelta(hours=3), NOW)
    elif status is ActionStatus.SCHEDULED:
        action.schedule_sms(AGENT, NOW + timedelta(hours=4), "UTC", NOW)
    elif status is ActionStatus.SENDING:
        action.send_sms(AGENT, uuid.uuid4(), now=NOW)
    elif status in (ActionStatus.CALLING, ActionStatus.AWAITING_OUTCOME):
        _, command = action.place_call(AGENT, uuid.uuid4(), agent_phone="+14155550199", now=NOW)
        if status is ActionStatus.AWAITING_OUTCOME:
            action.call_completed(command.command_id, "completed", NOW)
    elif status is ActionStatus.COMPLETED:
        action.send_sms(AGENT, uuid.uuid4(), now=NOW)
        assert action.pending_command_id is not None
        action.sms_sent(action.pending_command_id, NOW)
    elif status is ActionStatus.SKIPPED:
        action.skip(AGENT, "duplicate", NOW)
    elif status is ActionStatus.EXPIRED:
        action.expire(NOW)
    elif status is ActionStatus.DELETED:
        action.delete(AGENT, now=NOW)
    elif status is ActionStatus.FAILED:
        for _ in range(3):
            action.send_sms(AGENT, uuid.uuid4(), now=NOW)
            assert action.pending_command_id is not None
            action.sms_failed(action.pending_command_id, "unreachable", NOW)
    assert action.status is status
    return action


# --- domain ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [ActionStatus.QUEUED, ActionStatus.RESERVED, ActionStatus.SNOOZED,
                                    ActionStatus.SCHEDULED])
def test_reschedule_sets_the_due_time_and_keeps_everything_else(status: ActionStatus) -> None:
    action = _in(status)
    def kept() -> tuple[Any, ...]:
        return (action.status, action.reserved_by, action.lease_expires_at, action.snoozed_until,
                action.send_at, action.assignee_user_id, action.status_reason)

    before = kept()
    version = action.version
    event = action.reschedule(LATER, MANAGER, "customer asked for Thursday", NOW)
    assert event == ActionRescheduled(
        action_id=action.id, action_type=action.type, assignee_user_id=AGENT, due_at=LATER,
        previous_due_at=None, reason="customer asked for Thursday", rescheduled_by=MANAGER,
        rescheduled_at=NOW)
    assert (action.due_at, action.effective_due_at, action.version) == (LATER, LATER, version + 1)
    assert kept() == before
    last = action.history[-1]
    assert (last.from_status, last.to_status, last.by, last.at) == (status, status, MANAGER, NOW)
    assert last.reason == f"due time changed to {LATER.isoformat()}: customer asked for Thursday"


def test_reschedule_to_as_soon_as_possible_orders_by_queue_time_again() -> None:
    action = _action(due_at=LATER)
    early = _action(queued_at=T0 + timedelta(minutes=5))  # no due time: due when queued
    assert early.queue_key() < action.queue_key()
    event = action.reschedule(None, AGENT, None, NOW)
    assert event is not None and (event.due_at, event.previous_due_at) == (None, LATER)
    assert (action.due_at, action.effective_due_at) == (None, action.queued_at)
    assert action.queue_key() < early.queue_key()  # queued earlier, now due earlier
    assert action.history[-1].reason == "due time changed to as soon as possible"
    assert not action.is_overdue(LATER + timedelta(days=1))


def test_reschedule_to_the_same_due_time_records_nothing() -> None:
    action = _action(due_at=LATER)
    assert action.reschedule(LATER, AGENT, "again", NOW) is None
    assert action.reschedule(LATER.astimezone(PLUS_TWO), AGENT, None, NOW) is None  # same instant
    assert (action.version, len(action.history)) == (1, 1)
    assert _action().reschedule(None, AGENT, None, NOW) is None


def test_reschedule_needs_an_offset() -> None:
    action = _action()
    with pytest.raises(InvalidField) as raised:
        action.reschedule(LATER.replace(tzinfo=None), AGENT, None, NOW)
    assert raised.value.field == "due_at"
    assert (action.version, action.due_at) == (1, None)


@pytest.mark.parametrize("status", [ActionStatus.SENDING, ActionStatus.CALLING, ActionStatus.AWAITING_OUTCOME,
                                    ActionStatus.COMPLETED, ActionStatus.SKIPPED, ActionStatus.EXPIRED,
                                    ActionStatus.FAILED, ActionStatus.DELETED])
def test_reschedule_is_refused_under_way_and_once_finished(status: ActionStatus) -> None:
    action = _in(status)
    version = action.version
    with pytest.raises(InvalidTransition):
        action.reschedule(LATER, AGENT, None, NOW)
    assert (action.version, action.due_at) == (version, None)


def test_rebuild_folds_a_reschedule_like_the_transition() -> None:
    queued = action_queued(assignee=AGENT)
    live = ManualAction.from_queued("acme", queued, sequence=1)
    envelopes: list[Envelope[Any]] = [wrap(queued, tenant="acme", subject=queued.action_id)]
    steps = [lambda: live.reserve(AGENT, NOW), lambda: live.reschedule(LATER, AGENT, "later", NOW),
             lambda: live.release(AGENT, NOW),
             lambda: live.reschedule(None, MANAGER, None, NOW + timedelta(minutes=1))]
    for step in steps:
        event = step()
        assert event is not None
        envelopes.append(wrap(event, tenant="acme", subject=queued.action_id, sequence=live.version,
                              source="action-queue"))
    # Through JSON and back, as another team reads the topic.
    decoded = [decode(e.to_json_bytes()) for e in envelopes]
    rebuilt = rebuild(decoded)[queued.action_id]
    assert rebuilt == live
    assert (rebuilt.version, rebuilt.due_at, rebuilt.status) == (5, None, ActionStatus.QUEUED)


# --- the endpoint, against the real Kafka and PostgreSQL ------------------------------------------


@pytest.fixture
async def tenant(aq: Harness) -> Tenant:
    return await Tenant.create(aq)


async def _rescheduled(aq: Harness, action_id: uuid.UUID, count: int) -> list[dict[str, Any]]:
    """The ActionRescheduled envelopes about ``action_id``, once ``count`` of them are on the topic and
    the recorder has read everything published so far (so a further one would show)."""
    async def found() -> list[dict[str, Any]] | None:
        events = aq.recorder.about(topics.ACTION_LIFECYCLE, action_id, "ActionRescheduled")
        return events if len(events) >= count else None

    await eventually(found, what=f"{count} ActionRescheduled about {action_id}")
    await aq.recorder_caught_up()
    return aq.recorder.about(topics.ACTION_LIFECYCLE, action_id, "ActionRescheduled")


@pytest.mark.integration
async def test_reschedule_changes_what_lets_start_hands_out(aq: Harness, tenant: Tenant) -> None:
    now = datetime.now(UTC)
    # Same priority, no due times: Let's Start would hand them out oldest first (a, b, c).
    a, b, c = [await tenant.queue(queued_at=now - timedelta(minutes=30 - i)) for i in range(3)]
    later = (now + timedelta(days=1)).replace(microsecond=0)
    moved = await tenant.agent.post(f"/v1/actions/{a}/reschedule", json={
        "due_at": later.isoformat(), "reason": "customer asked for tomorrow"})
    assert moved.status_code == 200, moved.text
    body = moved.json()
    assert (datetime.fromisoformat(body["due_at"]), body["status"], body["version"]) == (later, "queued", 2)
    # c is wanted before anything else: its due time lies in the past (an hour ago: overdue).
    overdue = (now - timedelta(hours=1)).astimezone(PLUS_TWO)
    assert (await tenant.admin.post(f"/v1/actions/{c}/reschedule",
                                    json={"due_at": overdue.isoformat()})).status_code == 200
    listed = (await tenant.agent.get("/v1/actions", params={"overdue": "true"})).json()
    assert [i["id"] for i in listed["items"]] == [str(c)]

    order = []
    for _ in range(3):
        taken = await tenant.agent.post("/v1/queue/next")
        assert taken.status_code == 200, taken.text
        order.append(taken.json()["id"])
    assert order == [str(c), str(b), str(a)]

    # The same due time again changes nothing and publishes nothing.
    again = await tenant.agent.post(f"/v1/actions/{a}/reschedule", json={"due_at": later.isoformat()})
    assert again.status_code == 200 and again.json()["version"] == 3  # reserved by Let's Start since
    events = await _rescheduled(aq, a, 1)
    assert len(events) == 1
    event = events[0]
    assert (event["sequence"], event["source"], event["tenant"]) == (2, "action-queue", tenant.name)
    data = event["data"]
    assert (datetime.fromisoformat(data["due_at"]), data["previous_due_at"], data["reason"],
            data["rescheduled_by"], data["assignee_user_id"]) == (
        later, None, "customer asked for tomorrow", str(tenant.users["agent"]), str(tenant.users["agent"]))
    assert registry.validate_envelope(event, topics.ACTION_LIFECYCLE) == []
    by_admin = (await _rescheduled(aq, c, 1))[0]
    assert (by_admin["sequence"], by_admin["data"]["rescheduled_by"]) == (2, None)  # a token without a user

    # While reserved (by Let's Start above), the holder may still move it; back to "as soon as possible".
    cleared = await tenant.agent.post(f"/v1/actions/{a}/reschedule", json={"due_at": None})
    assert cleared.status_code == 200, cleared.text
    assert (cleared.json()["due_at"], cleared.json()["status"], cleared.json()["reserved_by"]) == (
        None, "reserved", str(tenant.users["agent"]))
    second = (await _rescheduled(aq, a, 2))[1]
    assert (second["sequence"], second["data"]["due_at"]) == (4, None)
    assert datetime.fromisoformat(second["data"]["previous_due_at"]) == later


@pytest.mark.integration
async def test_reschedule_problems(aq: Harness, tenant: Tenant) -> None:
    action_id = await tenant.queue()
    url = f"/v1/actions/{action_id}/reschedule"
    naive = _problem(await tenant.agent.post(url, json={"due_at": "2030-01-01T09:00:00"}), 422)
    assert naive["field"] == "body.due_at"
    assert [e["field"] for e in naive["errors"]] == ["body.due_at"]
    missing = _problem(await tenant.agent.post(url, json={"reason": "no time given"}), 422)
    assert [e["field"] for e in missing["errors"]] == ["body.due_at"]
    _problem(await tenant.agent.post(url, json={"due_at": None, "extra": 1}), 422)

    deleted = await tenant.agent.delete(f"/v1/actions/{action_id}")
    assert deleted.status_code == 200, deleted.text
    finished = _problem(await tenant.agent.post(url, json={"due_at": datetime.now(UTC).isoformat()}), 409)
    assert (finished["action_status"], finished["attempted"]) == ("deleted", "reschedule")
    assert (await tenant.admin.get(f"/v1/actions/{action_id}")).json()["version"] == 2


@pytest.mark.integration
async def test_reschedule_is_scoped_like_every_endpoint(aq: Harness, tenant: Tenant) -> None:
    action_id = await tenant.queue()
    body = {"due_at": (datetime.now(UTC) + timedelta(hours=3)).isoformat()}
    url = f"/v1/actions/{action_id}/reschedule"
    intruder = await Tenant.create(aq)
    _problem(await intruder.admin.post(url, json=body), 404)  # another tenant's
    _problem(await tenant.other_agent.post(url, json=body), 404)  # another agent's: as if missing
    unauthenticated = await aq.client("not-a-token").post(url, json=body)
    assert unauthenticated.status_code == 401
    assert (await tenant.admin.get(f"/v1/actions/{action_id}")).json()["version"] == 1

    team = await Team.create(aq)
    [mine] = await team.store("a1")
    team_url = f"/v1/actions/{mine}/reschedule"
    _problem(await team["m2"].post(team_url, json=body), 404)  # another team's manager
    _problem(await team["a2"].post(team_url, json=body), 404)  # a colleague
    assert (await team["m1"].post(team_url, json=body)).status_code == 200  # the agent's manager
    later = {"due_at": (datetime.now(UTC) + timedelta(hours=5)).isoformat()}
    assert (await team["admin"].post(team_url, json=later)).status_code == 200
    assert (await team["a1"].post(team_url, json={"due_at": None})).status_code == 200
    events = await _rescheduled(aq, mine, 3)
    assert [e["sequence"] for e in events] == [2, 3, 4]
    assert [e["data"]["rescheduled_by"] for e in events] == [str(team.ids["m1"]), None, str(team.ids["a1"])]
