"""The team directory (UserUpdated), tenant settings, CancelAction and SMS re-render, against the
real Kafka and PostgreSQL: manager team scope on every endpoint, the agent phone default, scheduling
in the user's time zone, out of office (redistribute and hold), call outcomes and settings
validation, CancelAction (incl. an SMS under way), templates rendered with changed contact data."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aq_factories import action_queued, wrap
from aq_harness import Harness, eventually
from test_action_queue_integration import _problem

from action_queue.domain import ManualAction
from action_queue.handlers import directory
from manual_actions.auth import Role
from manual_actions.contracts import ActionType, topics
from manual_actions.contracts.messages import (
    Availability,
    CancelAction,
    ChannelFlags,
    ContactUpdated,
    UserUpdated,
)

pytestmark = pytest.mark.integration

SETTINGS = {"outcomes": [{"slug": "connected", "label": "Connected"}],
            "quiet_hours": {"start": "21:00", "end": "08:00"}, "out_of_office": "redistribute"}


class Team:
    """A tenant with two teams: manager ``m1`` with agents ``a1``, ``a2``, ``a3`` (team 1), manager
    ``m2`` with agent ``b1`` (team 2), an admin; each with an HTTP client, all in the directory."""

    def __init__(self, aq: Harness, tenant: str) -> None:
        self.aq = aq
        self.tenant = tenant
        self.team1, self.team2 = uuid.uuid4(), uuid.uuid4()
        self.ids: dict[str, uuid.UUID] = {}
        self.clients: dict[str, Any] = {}
        self.versions: dict[uuid.UUID, int] = {}

    @classmethod
    async def create(cls, aq: Harness) -> Team:
        team = cls(aq, await aq.new_tenant())
        members = {"m1": (Role.MANAGER, team.team1), "a1": (Role.AGENT, team.team1),
                   "a2": (Role.AGENT, team.team1), "a3": (Role.AGENT, team.team1),
                   "m2": (Role.MANAGER, team.team2), "b1": (Role.AGENT, team.team2)}
        sent = []
        for i, (name, (role, team_id)) in enumerate(members.items()):
            user_id = uuid.uuid4()
            team.ids[name] = user_id
            team.clients[name] = aq.client(await aq.token(team.tenant, role, user_id))
            sent.append(await team.user(name, role=role.value, team_id=team_id, phone=f"+1415555020{i}",
                                        wait=False))
        team.clients["admin"] = aq.client(await aq.token(team.tenant, Role.ADMIN))
        await aq.wait_consumed(*sent)
        return team

    async def user(self, name: str, *, role: str = "agent", team_id: uuid.UUID | None = None,
                   phone: str = "+14155550299", timezone: str = "UTC", availability: str = "available",
                   unavailable_from: datetime | None = None, wait: bool = True) -> Any:
        user_id = self.ids[name]
        version = self.versions.get(user_id, 0) + 1
        self.versions[user_id] = version
        event = UserUpdated(user_id=user_id, name=f"User {name.upper()}", phone=phone, role=role,
                            team_id=team_id if team_id is not None else self.team1, timezone=timezone,
                            availability=Availability(status=availability, unavailable_from=unavailable_from),
                            updated_at=datetime.now(UTC))
        meta = await self.aq.produce(wrap(event, tenant=self.tenant, subject=user_id, sequence=version),
                                     topic=topics.USERS)
        if wait:
            await self.aq.wait_consumed(meta)
        return meta

    async def store(self, assignee: str, count: int = 1, **kwargs: Any) -> list[uuid.UUID]:
        base = datetime.now(UTC) - timedelta(hours=1)
        actions = [ManualAction.from_queued(self.tenant, action_queued(
            assignee=self.ids[assignee], queued_at=base + timedelta(seconds=i), **kwargs), sequence=1)
            for i in range(count)]
        async with self.aq.service.uow() as uow:
            for action in actions:
                assert await uow.actions.add_if_absent(action)
            await uow.commit()
        return [a.id for a in actions]

    def __getitem__(self, name: str) -> Any:
        return self.clients[name]


@pytest.fixture
async def team(aq: Harness) -> Team:
    return await Team.create(aq)


def _ids(body: dict[str, Any]) -> set[str]:
    return {i["id"] for i in body["items"]}


async def test_managers_see_and_act_only_on_their_teams_actions(aq: Harness, team: Team) -> None:
    [mine] = await team.store("a1")
    [theirs] = await team.store("b1")
    m1, m2 = team["m1"], team["m2"]
    listed = (await m1.get("/v1/actions", params={"counts": "true"})).json()
    assert _ids(listed) == {str(mine)} and listed["counts"]["total"] == 1
    assert _ids((await m2.get("/v1/actions")).json()) == {str(theirs)}
    other_team = await m1.get("/v1/actions", params={"assignee_user_id": str(team.ids["b1"])})
    assert other_team.json()["items"] == []
    # Every single-action endpoint answers 404 for another team's action.
    for method, path, body in [
        ("GET", "", None), ("DELETE", "", None), ("POST", "/skip", {"reason": "x"}),
        ("POST", "/snooze", {"until": (datetime.now(UTC) + timedelta(hours=1)).isoformat()}),
        ("POST", "/reassign", {"assignee_user_id": str(team.ids["a1"])}), ("POST", "/release", None),
        ("POST", "/lease", None), ("POST", "/send-sms", None), ("POST", "/call", None),
        ("POST", "/complete", {"outcome": "connected"}), ("DELETE", "/schedule", None),
        ("POST", "/schedule-sms", {"send_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat()}),
    ]:
        response = await m1.request(method, f"/v1/actions/{theirs}{path}", json=body)
        assert _problem(response, 404)["title"] == "Manual action not found", (method, path)
    # Within the team: allowed; to someone outside the team: a problem naming the field.
    moved = await m1.post(f"/v1/actions/{mine}/reassign", json={"assignee_user_id": str(team.ids["a2"])})
    assert moved.status_code == 200, moved.text
    outside = await m1.post(f"/v1/actions/{mine}/reassign", json={"assignee_user_id": str(team.ids["b1"])})
    assert _problem(outside, 422)["field"] == "assignee_user_id"
    # Bulk: limited to the team; another team's manager cannot see the request.
    bad = await m1.post("/v1/actions/bulk", json={"request_id": "m1-b", "operation": "delete",
                                                  "filter": {"assignee_user_id": str(team.ids["b1"])}})
    assert _problem(bad, 422)["field"] == "filter.assignee_user_id"
    accepted = await m1.post("/v1/actions/bulk", json={"request_id": "m1-all", "operation": "delete"})
    assert accepted.status_code == 202, accepted.text

    async def done() -> bool:
        return (await m1.get("/v1/actions/bulk/m1-all")).json()["status"] == "done"

    await eventually(done, what="m1's bulk delete done")
    assert _problem(await m2.get("/v1/actions/bulk/m1-all"), 404)["title"] == "Bulk request not found"
    assert (await team["admin"].get("/v1/actions/bulk/m1-all")).status_code == 200
    assert (await team["admin"].get(f"/v1/actions/{mine}")).json()["status"] == "deleted"
    assert (await team["admin"].get(f"/v1/actions/{theirs}")).json()["status"] == "queued"
    # Another tenant's admin sees none of it.
    stranger = aq.client(await aq.token(await aq.new_tenant(), Role.ADMIN))
    assert _problem(await stranger.get(f"/v1/actions/{mine}"), 404)
    assert _problem(await stranger.get("/v1/actions/bulk/m1-all"), 404)


async def test_call_rings_the_assignees_phone_from_the_directory(aq: Harness, team: Team) -> None:
    [action_id] = await team.store("a2", action_type=ActionType.CALL)
    placed = await team["a2"].post(f"/v1/actions/{action_id}/call")
    assert placed.status_code == 202, placed.text
    [command] = await eventually(lambda: aq.recorder.about(topics.CALL_COMMANDS, action_id),
                                 what="PlaceCall")
    assert command["data"]["agent_phone"] == "+14155550202"
    # Nobody known: an admin token without a user calling an action of someone not in the directory.
    nobody = uuid.uuid4()
    event = action_queued(assignee=nobody, action_type=ActionType.CALL)
    action = ManualAction.from_queued(team.tenant, event, sequence=1)
    async with aq.service.uow() as uow:
        await uow.actions.add_if_absent(action)
        await uow.commit()
    missing = _problem(await team["admin"].post(f"/v1/actions/{action.id}/call"), 422)
    assert missing["field"] == "agent_phone"
    explicit = await team["admin"].post(f"/v1/actions/{action.id}/call", json={"agent_phone": "+14155550111"})
    assert explicit.status_code == 202, explicit.text


async def test_schedule_sms_in_the_users_time_zone(aq: Harness, team: Team) -> None:
    await team.user("a1", timezone="Asia/Tokyo")
    [action_id] = await team.store("a1")
    year = datetime.now(UTC).year + 1
    scheduled = await team["a1"].post(f"/v1/actions/{action_id}/schedule-sms",
                                      json={"send_at": f"{year}-03-01T09:00:00", "timezone": "user"})
    assert scheduled.status_code == 200, scheduled.text
    assert datetime.fromisoformat(scheduled.json()["send_at"]) == datetime(year, 3, 1, 0, 0, tzinfo=UTC)
    [other] = await team.store("a1")
    unknown_contact = await team["a1"].post(f"/v1/actions/{other}/schedule-sms",
                                            json={"send_at": f"{year}-03-01T09:00:00", "timezone": "contact"})
    assert _problem(unknown_contact, 422)["field"] == "timezone"
    nobody = aq.client(await aq.token(team.tenant, Role.ADMIN))
    no_zone = await nobody.post(f"/v1/actions/{other}/schedule-sms",
                                json={"send_at": f"{year}-03-01T09:00:00", "timezone": "user"})
    assert _problem(no_zone, 422)["field"] == "timezone"


async def test_out_of_office_redistributes_queued_actions_round_robin(aq: Harness, team: Team) -> None:
    queued = await team.store("a1", 4)
    [held] = await team.store("a1")
    reserved = await team["a1"].post("/v1/queue/next")
    assert reserved.status_code == 200 and reserved.json()["id"] == str(queued[0])
    await team.user("a3", availability="away")
    await team.user("a1", availability="out_of_office")
    # Away is not out by default, so the rest of team 1 (m1, a2, a3) shares the four queued actions.

    async def moved() -> list[dict[str, Any]] | None:
        events = [e for i in [*queued[1:], held] for e in aq.recorder.about(topics.ACTION_LIFECYCLE, i,
                                                                            "ActionReassigned")]
        return events if len(events) == 4 else None

    events = await eventually(moved, what="four ActionReassigned")
    assert {e["data"]["reason"] for e in events} == {"out of office: redistributed to the team"}
    targets = [e["data"]["assignee_user_id"] for e in events]
    shares = {name: targets.count(str(team.ids[name])) for name in ("m1", "a2", "a3")}
    assert sum(shares.values()) == 4 and sorted(shares.values()) == [1, 1, 2], shares
    # The reservation stays with a1.
    body = (await team["admin"].get(f"/v1/actions/{queued[0]}")).json()
    assert (body["status"], body["assignee_user_id"]) == ("reserved", str(team.ids["a1"]))
    # Away counting as out: a3's queued actions move on too (to m1 and a2; a1 is out).
    await team["admin"].put("/v1/settings", json={**SETTINGS, "away_counts_as_out": True})
    await team.user("a3", availability="away")

    async def a3_empty() -> bool:
        page = (await team["a3"].get("/v1/actions", params={"status": "queued"})).json()
        return page["items"] == []

    await eventually(a3_empty, what="a3's queued actions redistributed")


async def test_an_absence_starting_later_is_redistributed_when_it_starts(aq: Harness, team: Team) -> None:
    start = datetime.now(UTC) + timedelta(hours=1)
    ids = await team.store("b1", 2)
    await team.user("b1", team_id=team.team2, availability="out_of_office", unavailable_from=start)
    assert {a["assignee_user_id"] for a in (await team["m2"].get("/v1/actions")).json()["items"]} == {
        str(team.ids["b1"])}
    # What the out-of-office loop does at that time (run here with a clock set to it).
    assert await directory.redistribute_due(aq.service.uow, start + timedelta(minutes=1)) >= 2
    after = {a["id"]: a["assignee_user_id"] for a in (await team["m2"].get("/v1/actions")).json()["items"]}
    assert {after[str(i)] for i in ids} == {str(team.ids["m2"])}  # m2 is b1's only teammate


async def test_out_of_office_hold_keeps_actions_and_offers_none_until_back(aq: Harness, team: Team) -> None:
    put = await team["admin"].put("/v1/settings", json={**SETTINGS, "out_of_office": "hold"})
    assert put.status_code == 200, put.text
    ids = await team.store("a1", 3)
    await team.user("a1", availability="out_of_office")
    assert (await team["a1"].post("/v1/queue/next")).status_code == 204
    page = (await team["m1"].get("/v1/actions", params={"assignee_user_id": str(team.ids["a1"])})).json()
    assert _ids(page) == set(map(str, ids))
    assert all(not aq.recorder.about(topics.ACTION_LIFECYCLE, i, "ActionReassigned") for i in ids)
    await team.user("a1", availability="available")
    back = await team["a1"].post("/v1/queue/next")
    assert back.status_code == 200 and back.json()["id"] == str(ids[0])


async def test_settings_validation_and_custom_outcomes(aq: Harness, team: Team) -> None:
    defaults = (await team["a1"].get("/v1/settings")).json()
    assert [o["slug"] for o in defaults["outcomes"]] == ["connected", "no_answer", "voicemail", "busy"]
    assert (defaults["quiet_hours"], defaults["out_of_office"], defaults["version"]) == (
        {"start": "21:00", "end": "08:00"}, "redistribute", 0)
    good = {"outcomes": [{"slug": "connected", "label": "Connected"},
                         {"slug": "callback_later", "label": "Call back later"}],
            "quiet_hours": {"start": "20:00", "end": "09:30"}, "out_of_office": "redistribute"}
    assert _problem(await team["m1"].put("/v1/settings", json=good), 403)
    assert _problem(await team["a1"].put("/v1/settings", json=good), 403)
    for bad, field in [
        ({**good, "outcomes": [{"slug": "Call Back", "label": "x"}]}, "body.outcomes.0.slug"),
        ({**good, "outcomes": [good["outcomes"][0], good["outcomes"][0]]}, "body.outcomes.1.slug"),
        ({**good, "outcomes": [{"slug": "ok", "label": " "}]}, "body.outcomes.0.label"),
        ({**good, "outcomes": []}, "body.outcomes"),
        ({**good, "quiet_hours": {"start": "25:00", "end": "08:00"}}, "body.quiet_hours.start"),
        ({**good, "quiet_hours": {"start": "08:00", "end": "08:00"}}, "body.quiet_hours.end"),
    ]:
        assert _problem(await team["admin"].put("/v1/settings", json=bad), 422)["field"] == field, bad
    saved = await team["admin"].put("/v1/settings", json=good)
    assert saved.status_code == 200, saved.text
    assert saved.json()["version"] == 1
    assert (await team["m2"].get("/v1/settings")).json()["quiet_hours"] == {"start": "20:00", "end": "09:30"}
    # Another tenant keeps its defaults, and its admin's PUT changes only its own settings.
    stranger = aq.client(await aq.token(await aq.new_tenant(), Role.AGENT, uuid.uuid4()))
    assert (await stranger.get("/v1/settings")).json()["version"] == 0
    stranger_admin = aq.client(await aq.token(await aq.new_tenant(), Role.ADMIN))
    elsewhere = await stranger_admin.put("/v1/settings", json={**good, "out_of_office": "hold"})
    assert elsewhere.status_code == 200
    assert (await team["m1"].get("/v1/settings")).json()["out_of_office"] == "redistribute"
    anonymous = aq.client("not-a-token")
    assert (await anonymous.get("/v1/settings")).status_code == 401
    assert (await anonymous.put("/v1/settings", json=good)).status_code == 401
    # complete accepts the tenant's outcomes only.
    [a, b] = await team.store("a1", 2, action_type=ActionType.CALL)
    for action_id in (a, b):
        placed = await team["a1"].post(f"/v1/actions/{action_id}/call")
        assert placed.status_code == 202, placed.text
    removed = await team["a1"].post(f"/v1/actions/{a}/complete", json={"outcome": "voicemail"})
    assert _problem(removed, 422)["field"] == "outcome"
    custom = await team["a1"].post(f"/v1/actions/{b}/complete", json={"outcome": "callback_later"})
    assert custom.status_code == 200 and custom.json()["outcome"] == "callback_later"


async def test_cancel_action_deletes_once_unless_under_way(aq: Harness, team: Team) -> None:
    [queued, sending] = await team.store("a1", 2)
    sent = await team["a1"].post(f"/v1/actions/{sending}/send-sms")
    assert sent.status_code == 202, sent.text
    async with aq.service.uow() as uow:
        enrollments = {i: (await uow.actions.get(team.tenant, i)).enrollment_id  # type: ignore[union-attr]
                       for i in (queued, sending)}
    command_id = uuid.uuid4()

    def cancel(action_id: uuid.UUID, command: uuid.UUID) -> Any:
        payload = CancelAction(command_id=command, action_id=action_id,
                               enrollment_id=enrollments[action_id], reason="enrollment stopped",
                               requested_at=datetime.now(UTC))
        envelope = wrap(payload, tenant=team.tenant, subject=action_id)
        return team.aq.produce(envelope, topic=topics.ACTION_COMMANDS)

    metas = [await cancel(queued, command_id), await cancel(queued, command_id),  # the same command twice
             await cancel(sending, uuid.uuid4())]
    await aq.wait_consumed(*metas)
    body = (await team["admin"].get(f"/v1/actions/{queued}")).json()
    assert (body["status"], body["status_reason"]) == ("deleted", "enrollment stopped")
    await aq.recorder_caught_up()
    deleted = aq.recorder.about(topics.ACTION_LIFECYCLE, queued, "ActionDeleted")
    assert len(deleted) == 1 and deleted[0]["data"]["reason"] == "enrollment stopped"
    assert (await team["admin"].get(f"/v1/actions/{sending}")).json()["status"] == "sending"
    assert aq.recorder.about(topics.ACTION_LIFECYCLE, sending, "ActionDeleted") == []
    # An unknown action is dead-lettered with the reason, not absorbed.
    ghost = uuid.uuid4()
    enrollments[ghost] = uuid.uuid4()
    await aq.wait_consumed(await cancel(ghost, uuid.uuid4()))
    await aq.recorder_caught_up()
    dead = [r for r in aq.recorder.records if r.topic == topics.DEAD_LETTERS
            and (r.key == str(ghost).encode() or str(ghost).encode() in (r.value or b""))]
    assert len(dead) == 1


async def test_sms_is_rendered_again_with_the_contacts_current_data(aq: Harness, team: Team) -> None:
    contact_id = uuid.uuid4()
    template = "Hi {{contact.first_name}}, your {{contact.custom.plan}} plan. {{user.first_name}}"
    [action_id] = await team.store("a1", contact_id=contact_id, message_template=template,
                                   message="Hi Ada, your basic plan. Sam")
    [plain] = await team.store("a1", message="No template here")

    async def contact(version: int, name: str, plan: str) -> None:
        event = ContactUpdated(contact_id=contact_id, name=name, phone="+14155550100", email="g@example.com",
                               custom_fields={"plan": plan}, opted_out=ChannelFlags(),
                               do_not_disturb=ChannelFlags(), updated_at=datetime.now(UTC))
        await aq.wait_consumed(await aq.produce(wrap(event, tenant=team.tenant, subject=contact_id,
                                                     sequence=version), topic=topics.CONTACTS))

    # No contact row yet: the queued text.
    assert (await team["a1"].get(f"/v1/actions/{action_id}")).json()["proposed_message"] == (
        "Hi Ada, your basic plan. Sam")
    await contact(1, "Grace Hopper", "gold")
    body = (await team["a1"].get(f"/v1/actions/{action_id}")).json()
    assert body["proposed_message"] == "Hi Grace, your gold plan. User"
    assert body["message"] == "Hi Ada, your basic plan. Sam"
    await contact(2, "Katherine Johnson", "platinum")
    started = await team["a1"].post("/v1/queue/next")
    assert started.json()["id"] == str(action_id)
    assert started.json()["proposed_message"] == "Hi Katherine, your platinum plan. User"
    assert (await team["a1"].get(f"/v1/actions/{plain}")).json()["proposed_message"] == "No template here"
    sent = await team["a1"].post(f"/v1/actions/{action_id}/send-sms")
    assert sent.status_code == 202, sent.text
    [command] = await eventually(lambda: aq.recorder.about(topics.SMS_COMMANDS, action_id), what="SendSms")
    assert command["data"]["body"] == "Hi Katherine, your platinum plan. User"
    # An edited body still wins.
    sent_plain = await team["a1"].post(f"/v1/actions/{plain}/send-sms", json={"body": "Edited"})
    assert sent_plain.json()["message"] == "Edited"
