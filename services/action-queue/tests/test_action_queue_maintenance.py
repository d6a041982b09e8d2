"""Unit tests of the maintenance work (expiry, lapsed leases, ended snoozes, due scheduled SMS)
through the real handler with an in-memory unit of work."""

from __future__ import annotations

import uuid
from datetime import timedelta

from aq_factories import T0, action_queued, wrap
from aq_fakes import FakeUnitOfWork

from action_queue.domain import ActionStatus, Actor
from action_queue.handlers import maintenance, materialise, queue
from manual_actions.contracts import topics

TENANT = "acme"
AGENT = uuid.uuid4()
NOW = T0 + timedelta(hours=1)
agent = Actor(TENANT, AGENT, supervisor=False)


async def queue_action(uow: FakeUnitOfWork, **kwargs: object) -> uuid.UUID:
    event = action_queued(**{"assignee": AGENT, **kwargs})  # type: ignore[arg-type]
    await materialise.apply_batch(uow, [wrap(event, tenant=TENANT, subject=event.action_id)])
    return event.action_id


def published(uow: FakeUnitOfWork, action_id: uuid.UUID) -> list[tuple[str, str, int]]:
    return [(topic, e.type, e.sequence) for topic, e in uow.outbox if e.subject == str(action_id)]


async def test_nothing_due_changes_nothing() -> None:
    uow = FakeUnitOfWork()
    await queue_action(uow, expires_at=NOW + timedelta(hours=1))
    assert await maintenance.run_once(uow, NOW) == 0
    assert uow.outbox == []


async def test_an_action_past_its_expiry_expires_and_is_no_longer_handed_out() -> None:
    uow = FakeUnitOfWork()
    action_id = await queue_action(uow, expires_at=NOW)
    assert await queue.reserve_next(uow, agent, now=NOW) is None  # expired actions are not offered
    assert await maintenance.run_once(uow, NOW) == 1
    assert uow.store[action_id].status is ActionStatus.EXPIRED
    assert published(uow, action_id) == [(topics.ACTION_LIFECYCLE, "ActionExpired", 2)]
    assert await maintenance.run_once(uow, NOW + timedelta(days=1)) == 0


async def test_a_lapsed_lease_is_released() -> None:
    uow = FakeUnitOfWork()
    action_id = await queue_action(uow)
    reserved = await queue.reserve_next(uow, agent, now=NOW)
    assert reserved is not None and reserved.lease_expires_at is not None
    assert await maintenance.run_once(uow, reserved.lease_expires_at - timedelta(seconds=1)) == 0
    assert await maintenance.run_once(uow, reserved.lease_expires_at) == 1
    action = uow.store[action_id]
    assert (action.status, action.reserved_by, action.status_reason) == (ActionStatus.QUEUED, None,
                                                                         "lease_lapsed")
    assert published(uow, action_id)[-1] == (topics.ACTION_LIFECYCLE, "ActionReleased", 3)


async def test_a_snooze_that_ended_puts_the_action_back() -> None:
    uow = FakeUnitOfWork()
    action_id = await queue_action(uow)
    await queue.snooze(uow, agent, action_id, until=NOW + timedelta(hours=1), reason=None, now=NOW)
    assert await maintenance.run_once(uow, NOW + timedelta(minutes=59)) == 0
    assert await maintenance.run_once(uow, NOW + timedelta(hours=1)) == 1
    assert uow.store[action_id].status is ActionStatus.QUEUED
    assert published(uow, action_id)[-1] == (topics.ACTION_LIFECYCLE, "ActionRequeued", 3)


async def test_a_due_scheduled_sms_is_sent_by_the_person_who_scheduled_it() -> None:
    uow = FakeUnitOfWork()
    action_id = await queue_action(uow)
    send_at = NOW + timedelta(hours=2)
    await queue.schedule_sms(uow, agent, action_id, send_at=send_at, timezone_name="Europe/Berlin",
                             body="See you tomorrow", now=NOW)
    assert await maintenance.run_once(uow, send_at - timedelta(seconds=1)) == 0
    assert await maintenance.run_once(uow, send_at) == 1
    assert uow.store[action_id].status is ActionStatus.SENDING
    assert published(uow, action_id)[-2:] == [(topics.ACTION_LIFECYCLE, "ActionSmsRequested", 3),
                                              (topics.SMS_COMMANDS, "SendSms", 1)]
    command = uow.outbox[-1][1].data
    assert (command.body, command.requested_by) == ("See you tomorrow", AGENT)


async def test_a_due_scheduled_sms_that_cannot_be_sent_is_skipped_with_the_reason() -> None:
    uow = FakeUnitOfWork()
    action_id = await queue_action(uow)
    send_at = NOW + timedelta(hours=2)
    await queue.schedule_sms(uow, agent, action_id, send_at=send_at, timezone_name="UTC", body=None, now=NOW)
    # the contact's number became unusable meanwhile (a snapshot edited here to simulate it)
    stored = uow.store[action_id]
    stored.contact = type(stored.contact)(id=stored.contact.id, name=stored.contact.name, phone=None)
    assert await maintenance.run_once(uow, send_at) == 1
    action = uow.store[action_id]
    assert action.status is ActionStatus.SKIPPED
    assert action.status_reason is not None and "has no phone number" in action.status_reason
    assert published(uow, action_id)[-1] == (topics.ACTION_LIFECYCLE, "ActionSkipped", 3)
