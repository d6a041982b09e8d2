"""Unit tests of the checks at the moment of work, and of the use cases that run them."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta

import pytest
from aq_factories import action_queued, wrap
from aq_fakes import FakeUnitOfWork

from action_queue.domain import ActionStatus, Actor, BlockedAtWork, ManualAction
from action_queue.domain.checks import ContactState, QuietHours, blocked_reason
from action_queue.handlers import maintenance, materialise, queue
from manual_actions.contracts import ActionType, topics

TENANT = "acme"
AGENT = uuid.uuid4()
agent = Actor(TENANT, AGENT, supervisor=False)
# 15:00 UTC is 10:00 in New York (winter) and 23:00 in Singapore
NOON = datetime(2025, 1, 6, 15, 0, tzinfo=UTC)


def sms(phone: str | None = "+14155550100") -> ManualAction:
    return ManualAction.from_queued(TENANT, action_queued(assignee=AGENT, phone=phone), sequence=1)


def contact(**kwargs: object) -> ContactState:
    return replace(ContactState(phone="+14155550100", timezone="America/New_York", version=1), **kwargs)


def test_a_reachable_contact_in_working_hours_passes() -> None:
    assert blocked_reason(sms(), contact(), NOON) is None
    assert blocked_reason(sms(), None, NOON) is None  # only the snapshot: number check only


@pytest.mark.parametrize(("state", "reason"), [
    (contact(opted_out=frozenset({ActionType.SMS})), "the contact opted out of SMS"),
    (contact(do_not_disturb=frozenset({ActionType.SMS})), "do not disturb is on for SMS to this contact"),
    (contact(deleted=True), "the contact was deleted"),
    (contact(phone=None), "the contact has no phone number"),
    (contact(phone="+1415555"), "the contact's number +1415555 is not a valid phone number"),
])
def test_blocked_for_the_channel(state: ContactState, reason: str) -> None:
    assert blocked_reason(sms(), state, NOON) == reason


def test_opt_out_of_one_channel_does_not_block_the_other() -> None:
    call = ManualAction.from_queued(TENANT, action_queued(assignee=AGENT, action_type=ActionType.CALL),
                                    sequence=1)
    assert blocked_reason(call, contact(opted_out=frozenset({ActionType.SMS})), NOON) is None
    assert blocked_reason(call, contact(do_not_disturb=frozenset({ActionType.CALL})), NOON) is not None


def test_the_current_number_wins_over_the_snapshot() -> None:
    assert blocked_reason(sms(phone=None), contact(phone="+14155550100"), NOON) is None
    assert blocked_reason(sms(), contact(phone=None), NOON) == "the contact has no phone number"


@pytest.mark.parametrize(("zone", "blocked"), [("America/New_York", False), ("Asia/Singapore", True),
                                               ("Europe/London", False)])
def test_quiet_hours_in_the_contacts_time_zone(zone: str, blocked: bool) -> None:
    reason = blocked_reason(sms(), contact(timezone=zone), NOON)
    assert (reason is not None) is blocked
    if blocked:
        assert reason == "quiet hours: it is 23:00 in Asia/Singapore for the contact, between 21:00 and 08:00"


def test_quiet_hours_boundaries_and_a_window_within_one_day() -> None:
    night = QuietHours()
    assert night.contains(time(21, 0)) and night.contains(time(7, 59)) and night.contains(time(0, 0))
    assert not night.contains(time(8, 0)) and not night.contains(time(20, 59))
    lunch = QuietHours(start=time(12, 0), end=time(13, 0))
    assert lunch.contains(time(12, 30)) and not lunch.contains(time(13, 0))


def test_without_a_known_time_zone_quiet_hours_do_not_block() -> None:
    assert blocked_reason(sms(), contact(timezone=None), NOON + timedelta(hours=8)) is None


# --- use cases ---------------------------------------------------------------------------------


async def queue_action(uow: FakeUnitOfWork, **kwargs: object) -> ManualAction:
    event = action_queued(**{"assignee": AGENT, **kwargs})  # type: ignore[arg-type]
    await materialise.apply_batch(uow, [wrap(event, tenant=TENANT, subject=event.action_id)])
    return uow.store[event.action_id]


async def test_lets_start_skips_a_blocked_action_with_the_reason_and_hands_out_the_next() -> None:
    uow = FakeUnitOfWork()
    first = await queue_action(uow, priority=9)
    second = await queue_action(uow, priority=1)
    uow.contact_states[(TENANT, first.contact.id)] = contact(opted_out=frozenset({ActionType.SMS}))
    reserved = await queue.reserve_next(uow, agent, now=NOON)
    assert reserved is not None and reserved.id == second.id
    skipped = uow.store[first.id]
    assert (skipped.status, skipped.status_reason) == (ActionStatus.SKIPPED, "the contact opted out of SMS")
    [event] = [e for _, e in uow.outbox if e.subject == str(first.id)]
    assert (event.type, event.sequence, event.data.skipped_by) == ("ActionSkipped", 2, None)
    assert event.data.reason == "the contact opted out of SMS"


async def test_lets_start_answers_empty_when_everything_is_blocked_and_keeps_the_skips() -> None:
    uow = FakeUnitOfWork()
    action = await queue_action(uow, phone=None)
    assert await queue.reserve_next(uow, agent, now=NOON) is None
    assert uow.store[action.id].status is ActionStatus.SKIPPED


async def test_send_sms_in_quiet_hours_is_refused_and_the_action_skipped() -> None:
    uow = FakeUnitOfWork()
    action = await queue_action(uow)
    uow.contact_states[(TENANT, action.contact.id)] = contact(timezone="Asia/Singapore")
    with pytest.raises(BlockedAtWork) as caught:
        await queue.send_sms(uow, agent, action.id, body=None, now=NOON)
    assert caught.value.reason.startswith("quiet hours: it is 23:00 in Asia/Singapore")
    assert uow.store[action.id].status is ActionStatus.SKIPPED
    assert [topic for topic, _ in uow.outbox] == [topics.ACTION_LIFECYCLE]  # no SendSms


async def test_send_sms_uses_the_contacts_current_number() -> None:
    uow = FakeUnitOfWork()
    action = await queue_action(uow)
    uow.contact_states[(TENANT, action.contact.id)] = contact(phone="+442071838750")
    await queue.send_sms(uow, agent, action.id, body=None, now=NOON)
    assert uow.outbox[-1][1].data.to == "+442071838750"


async def test_a_due_scheduled_sms_for_an_opted_out_contact_is_skipped() -> None:
    uow = FakeUnitOfWork()
    action = await queue_action(uow)
    send_at = NOON + timedelta(minutes=5)
    await queue.schedule_sms(uow, agent, action.id, send_at=send_at, timezone_name="UTC", body=None, now=NOON)
    uow.contact_states[(TENANT, action.contact.id)] = contact(opted_out=frozenset({ActionType.SMS}))
    assert await maintenance.run_once(uow, send_at) == 1
    stored = uow.store[action.id]
    assert (stored.status, stored.status_reason) == (ActionStatus.SKIPPED,
                                                     "scheduled SMS not sent: the contact opted out of SMS")


async def test_contact_states_keep_the_newest_version() -> None:
    from manual_actions.contracts.messages import ChannelFlags, ContactUpdated

    uow = FakeUnitOfWork()
    contact_id = uuid.uuid4()

    def updated(sequence: int, opted_out: bool) -> object:
        payload = ContactUpdated(contact_id=contact_id, name="Ada", phone="+14155550100", timezone="UTC",
                                 opted_out=ChannelFlags(sms=opted_out), do_not_disturb=ChannelFlags(),
                                 updated_at=NOON)
        return wrap(payload, tenant=TENANT, subject=contact_id, sequence=sequence)

    await materialise.apply_batch(uow, [updated(2, True), updated(1, False)])  # the older one arrives late
    state = uow.contact_states[(TENANT, contact_id)]
    assert (state.version, state.opted_out) == (2, frozenset({ActionType.SMS}))


async def test_a_schedule_without_a_time_zone_is_read_in_the_contacts_zone() -> None:
    uow = FakeUnitOfWork()
    action = await queue_action(uow)
    uow.contact_states[(TENANT, action.contact.id)] = contact(timezone="America/New_York")
    scheduled = await queue.schedule_sms(uow, agent, action.id, send_at=datetime(2025, 1, 7, 9, 30),
                                         timezone_name=None, body=None, now=NOON)
    assert scheduled.send_at == datetime(2025, 1, 7, 14, 30, tzinfo=UTC)
    other = await queue_action(uow)  # no known contact state: UTC
    scheduled = await queue.schedule_sms(uow, agent, other.id, send_at=datetime(2025, 1, 7, 9, 30),
                                         timezone_name=None, body=None, now=NOON)
    assert scheduled.send_at == datetime(2025, 1, 7, 9, 30, tzinfo=UTC)
