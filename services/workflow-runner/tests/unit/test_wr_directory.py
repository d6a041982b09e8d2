"""Directory rules: tags, channel flags, availability, working hours, contact/user changes, and
the directory use cases (events staged with each change)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from wr_factories import T0, TENANT, contact, user
from wr_fakes import FakeUnitOfWork

from manual_actions.contracts import registry, topics
from workflow_runner.domain.directory import (
    Availability,
    AvailabilityStatus,
    Channel,
    ChannelFlags,
    WorkingHours,
    validate_tags,
)
from workflow_runner.domain.errors import Conflict, InvalidField, InvalidFields, NotFound
from workflow_runner.domain.people import Contact, User, UserRole
from workflow_runner.handlers import handlers
from workflow_runner.handlers.commands import CreateContact, CreateUser


def test_tags_are_trimmed_and_deduplicated_case_insensitively() -> None:
    assert validate_tags([" hot  lead ", "Hot Lead", "vip"]) == ["hot lead", "vip"]
    with pytest.raises(InvalidField) as caught:
        validate_tags(["ok", "a,b"])
    assert caught.value.field == "tags[1]"


def test_channel_flags_change_only_the_channels_given() -> None:
    base = ChannelFlags(sms=True, call=False)
    assert ChannelFlags.parse({"call": True}, field_name="opted_out", base=base) == ChannelFlags(True, True)
    with pytest.raises(InvalidField) as caught:
        ChannelFlags.parse({"email": True}, field_name="opted_out")
    assert caught.value.field == "opted_out.email"


def test_availability_by_dates() -> None:
    start, end = T0, T0 + timedelta(days=7)
    ooo = Availability.parse({"status": "out_of_office", "from": start.isoformat(), "until": end.isoformat()})
    assert ooo.status is AvailabilityStatus.OUT_OF_OFFICE
    assert not ooo.is_unavailable_at(start - timedelta(seconds=1))
    assert ooo.is_unavailable_at(start) and ooo.is_unavailable_at(end - timedelta(seconds=1))
    assert not ooo.is_unavailable_at(end)
    assert Availability.parse({"status": "away"}).is_unavailable_at(T0)
    assert not Availability.parse({"status": "available"}).is_unavailable_at(T0)
    with pytest.raises(InvalidField) as caught:
        Availability.parse({"status": "away", "from": end, "until": start})
    assert caught.value.field == "availability.until"
    with pytest.raises(InvalidField) as caught:
        Availability.parse({"status": "away", "from": "2025-01-01T00:00:00"})
    assert caught.value.field == "availability.from"
    with pytest.raises(InvalidField) as caught:
        Availability.parse({"status": "on_holiday"})
    assert caught.value.field == "availability.status"


def test_working_hours_are_read_in_the_users_time_zone() -> None:
    hours = WorkingHours.parse({"mon": [{"start": "09:00", "end": "17:00"}], "tue": []})
    assert hours is not None and hours.as_dict() == {"mon": [{"start": "09:00", "end": "17:00"}]}
    # 2025-01-06 is a Monday; 14:00 UTC is 09:00 in New York.
    monday_14_utc = datetime(2025, 1, 6, 14, 0, tzinfo=UTC)
    assert hours.contains(monday_14_utc, "America/New_York")
    assert not hours.contains(monday_14_utc - timedelta(minutes=1), "America/New_York")
    assert not hours.contains(monday_14_utc, "Asia/Tokyo")  # 23:00 there
    assert not hours.contains(monday_14_utc + timedelta(days=1), "America/New_York")  # Tuesday: off


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"someday": []}, "working_hours.someday"),
        ({"mon": [{"start": "9am", "end": "17:00"}]}, "working_hours.mon[0].start"),
        ({"mon": [{"start": "17:00", "end": "09:00"}]}, "working_hours.mon[0].end"),
        (
            {"mon": [{"start": "09:00", "end": "12:00"}, {"start": "11:00", "end": "13:00"}]},
            "working_hours.mon",
        ),
    ],
)
def test_bad_working_hours_name_the_field(value: object, field: str) -> None:
    with pytest.raises(InvalidField) as caught:
        WorkingHours.parse(value)
    assert caught.value.field == field


def test_user_can_take_work_only_when_available_and_optionally_in_hours() -> None:
    u = User.create(
        tenant=TENANT,
        name="Ada",
        phone="+14155552671",
        role=UserRole.AGENT,
        now=T0,
        timezone="Europe/London",
        working_hours={"mon": [{"start": "09:00", "end": "10:00"}]},
    )
    assert u.can_take_work(T0, respect_working_hours=True)  # Monday 09:00 London
    assert not u.can_take_work(T0 + timedelta(hours=1), respect_working_hours=True)
    assert u.can_take_work(T0 + timedelta(hours=1), respect_working_hours=False)
    away = u.changed({"availability": {"status": "away", "until": T0 + timedelta(hours=1)}}, T0)
    assert away.version == 2 and away.created_at == u.created_at
    assert not away.can_take_work(T0, respect_working_hours=False)
    assert away.can_take_work(T0 + timedelta(hours=1), respect_working_hours=False)
    assert not u.deleted(T0).can_take_work(T0, respect_working_hours=False)


def test_every_invalid_field_of_a_contact_is_reported() -> None:
    with pytest.raises(InvalidFields) as caught:
        Contact.create(tenant=TENANT, now=T0, name="", phone="12", email="nope", timezone="Mars/Base")
    assert [p.field for p in caught.value.problems] == ["name", "phone", "email", "timezone"]


def test_contact_changes_bump_the_version_and_keep_the_rest() -> None:
    c = contact(tags=["a"], opted_out={"sms": True})
    changed = c.changed({"name": "Grace Brewster Hopper", "do_not_disturb": {"call": True}}, T0)
    assert (changed.first_name, changed.last_name) == ("Grace", "Brewster Hopper")
    assert changed.opted_out == ChannelFlags(sms=True) and changed.do_not_disturb == ChannelFlags(call=True)
    assert changed.tags == ["a"] and changed.version == 2 and changed.id == c.id
    assert not changed.reachable_by(Channel.SMS) and not changed.reachable_by(Channel.CALL)
    with pytest.raises(InvalidField) as caught:
        c.changed({"phone": "+1 555"}, T0)
    assert caught.value.field == "phone"
    with pytest.raises(InvalidField):
        c.changed({"id": str(uuid.uuid4())}, T0)


async def test_contact_changes_publish_contact_updated_in_order() -> None:
    uow = FakeUnitOfWork()
    owner = await handlers.create_user(uow, CreateUser(TENANT, "Ada", "+14155552671", UserRole.AGENT))
    created = await handlers.create_contact(
        uow, CreateContact(TENANT, "Grace Hopper", phone="+14155550132", owner_user_id=owner.id)
    )
    await handlers.update_contact(uow, TENANT, created.id, {"opted_out": {"sms": True}, "tags": ["vip"]})
    await handlers.delete_contact(uow, TENANT, created.id)
    events = [e for _, e in uow.published_on(topics.CONTACTS)]
    assert [(e.subject, e.sequence) for e in events] == [(str(created.id), n) for n in (1, 2, 3)]
    assert events[1].data.opted_out.sms and events[1].data.tags == ["vip"]
    assert events[1].data.owner_user_id == owner.id
    assert events[2].data.deleted
    for e in events:
        assert registry.validate_envelope(e.to_jsonable(), topics.CONTACTS) == []
    with pytest.raises(NotFound):
        await handlers.get_contact(uow, TENANT, created.id)
    [(_, user_event)] = uow.published_on(topics.USERS)
    assert registry.validate_envelope(user_event.to_jsonable(), topics.USERS) == []


async def test_owner_and_team_must_exist_in_the_tenant() -> None:
    uow = FakeUnitOfWork()
    stranger = await handlers.create_user(uow, CreateUser("globex", "Eve", "+14155552671", UserRole.AGENT))
    with pytest.raises(InvalidField) as caught:
        await handlers.create_contact(uow, CreateContact(TENANT, "Grace", owner_user_id=stranger.id))
    assert caught.value.field == "owner_user_id"
    with pytest.raises(InvalidField) as caught:
        await handlers.create_user(
            uow, CreateUser(TENANT, "Ada", "+14155552671", UserRole.AGENT, team_id=uuid.uuid4())
        )
    assert caught.value.field == "team_id"
    assert uow.published_on(topics.CONTACTS) == []


async def test_team_names_are_unique_and_a_team_with_members_cannot_be_deleted() -> None:
    uow = FakeUnitOfWork()
    team = await handlers.create_team(uow, TENANT, "Closers", None)
    with pytest.raises(Conflict) as caught:
        await handlers.create_team(uow, TENANT, " Closers ", "again")
    assert caught.value.field == "name"
    member = await handlers.create_user(
        uow, CreateUser(TENANT, "Ada", "+14155552671", UserRole.AGENT, team_id=team.id)
    )
    with pytest.raises(Conflict):
        await handlers.delete_team(uow, TENANT, team.id)
    await handlers.update_user(uow, TENANT, member.id, {"team_id": None})
    await handlers.delete_team(uow, TENANT, team.id)
    with pytest.raises(NotFound):
        await handlers.get_team(uow, TENANT, team.id)


def test_factories_still_build_plain_people() -> None:
    assert user().availability.status is AvailabilityStatus.AVAILABLE and contact().version == 1
