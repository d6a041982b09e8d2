"""Unit tests of the use cases, driven through the real handlers with an in-memory unit of work."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from aq_factories import T0, action_queued, wrap
from aq_fakes import FakeUnitOfWork
from prometheus_client import REGISTRY

from action_queue.domain import ActionNotFound, ActionStatus, Actor, InvalidTransition, NotAllowed
from action_queue.handlers import materialise, queue
from action_queue.handlers.ports import ActionChanged, ActionFilter
from manual_actions.contracts import (
    ActionCompleted,
    ActionType,
    CallCompleted,
    SmsFailed,
    SmsSent,
    topics,
)

TENANT = "acme"
AGENT = uuid.uuid4()
OTHER_AGENT = uuid.uuid4()
NOW = T0 + timedelta(hours=1)
agent = Actor(TENANT, AGENT, supervisor=False)
other_agent = Actor(TENANT, OTHER_AGENT, supervisor=False)
manager = Actor(TENANT, uuid.uuid4(), supervisor=True)


async def queue_action(uow: FakeUnitOfWork, **kwargs: object) -> uuid.UUID:
    event = action_queued(**{"assignee": AGENT, **kwargs})  # type: ignore[arg-type]
    await materialise.apply_batch(uow, [wrap(event, tenant=TENANT, subject=event.action_id)])
    return event.action_id


def sms_sent(command_id: uuid.UUID, action_id: uuid.UUID, tenant: str = TENANT):  # type: ignore[no-untyped-def]
    return wrap(SmsSent(command_id=command_id, action_id=action_id, message_sid="SM" + "a" * 32,
                        to="+14155550100", delivery_status="sent", sent_at=NOW),
                tenant=tenant, subject=action_id, source="sms-sender")


# --- materialisation ---------------------------------------------------------------------------


async def test_action_queued_is_materialised_once_even_when_redelivered() -> None:
    uow = FakeUnitOfWork()
    event = action_queued(assignee=AGENT)
    envelope = wrap(event, tenant=TENANT, subject=event.action_id)
    await materialise.apply_batch(uow, [envelope, envelope])
    await materialise.apply_batch(uow, [envelope])
    # the same action in a second envelope (a producer retry with a new id) changes nothing either
    await materialise.apply_batch(uow, [wrap(event, tenant=TENANT, subject=event.action_id)])
    assert list(uow.store) == [event.action_id]
    assert uow.store[event.action_id].version == 1
    assert uow.outbox == []


async def test_action_id_of_another_tenant_is_unprocessable() -> None:
    uow = FakeUnitOfWork()
    event = action_queued(assignee=AGENT)
    await materialise.apply_batch(uow, [wrap(event, tenant=TENANT, subject=event.action_id)])
    with pytest.raises(materialise.UnprocessableMessage):
        await materialise.apply_batch(uow, [wrap(event, tenant="globex", subject=event.action_id)])
    assert uow.store[event.action_id].tenant == TENANT


async def test_our_own_lifecycle_events_are_ignored_but_foreign_completions_refused() -> None:
    uow = FakeUnitOfWork()
    action_id = await queue_action(uow)
    completed = ActionCompleted(action_id=action_id, action_type=ActionType.SMS, enrollment_id=uuid.uuid4(),
                                step_id="sms1", assignee_user_id=AGENT, outcome="sent", completed_by=None,
                                completed_at=NOW)
    await materialise.apply_batch(uow, [wrap(completed, tenant=TENANT, subject=action_id, sequence=2,
                                             source="action-queue")])
    assert uow.store[action_id].status is ActionStatus.QUEUED
    with pytest.raises(materialise.UnprocessableMessage):
        await materialise.apply_batch(uow, [wrap(completed, tenant=TENANT, subject=action_id, sequence=2)])


async def test_a_failing_message_rolls_back_the_whole_batch() -> None:
    uow = FakeUnitOfWork()
    good = action_queued(assignee=AGENT)
    unknown = sms_sent(uuid.uuid4(), uuid.uuid4())
    with pytest.raises(materialise.UnprocessableMessage, match="unknown action"):
        await materialise.apply_batch(uow, [wrap(good, tenant=TENANT, subject=good.action_id), unknown])
    assert uow.store == {}
    assert uow.inbox == set()


async def test_send_sms_then_sms_sent_completes_with_sequence_two() -> None:
    uow = FakeUnitOfWork()
    action_id = await queue_action(uow)
    sending = await queue.send_sms(uow, agent, action_id, body="Edited", now=NOW)
    assert sending.status is ActionStatus.SENDING
    [(event_topic, requested), (topic, command)] = uow.outbox
    assert event_topic == topics.ACTION_LIFECYCLE
    assert (requested.type, requested.sequence) == ("ActionSmsRequested", 2)
    assert requested.data.command_id == command.data.command_id
    assert topic == topics.SMS_COMMANDS
    assert command.type == "SendSms"
    assert command.subject == str(action_id)
    assert command.source == "action-queue"
    assert command.tenant == TENANT
    assert command.sequence == 1
    assert command.data.body == "Edited"
    assert command.data.requested_by == AGENT

    result = sms_sent(command.data.command_id, action_id)
    await materialise.apply_batch(uow, [result, result])
    action = uow.store[action_id]
    assert action.status is ActionStatus.COMPLETED
    assert action.outcome == "sent"
    assert len(uow.outbox) == 3
    topic, completed = uow.outbox[2]
    assert topic == topics.ACTION_LIFECYCLE
    assert completed.type == "ActionCompleted"
    assert completed.sequence == 3
    assert completed.subject == str(action_id)
    assert completed.causation_id == result.id
    assert completed.data.outcome == "sent"


async def test_sms_failed_requeues_with_the_reason_and_a_late_result_is_stale() -> None:
    uow = FakeUnitOfWork()
    action_id = await queue_action(uow)
    await queue.send_sms(uow, agent, action_id, body=None, now=NOW)
    command = uow.outbox[1][1].data
    failed = wrap(SmsFailed(command_id=command.command_id, action_id=action_id, reason="Invalid 'To' number",
                            error_code=21211, failed_at=NOW), tenant=TENANT, subject=action_id,
                  source="sms-sender")
    await materialise.apply_batch(uow, [failed])
    action = uow.store[action_id]
    assert action.status is ActionStatus.QUEUED
    assert action.last_error == "Invalid 'To' number"
    topic, requeued = uow.outbox[-1]
    assert (topic, requeued.type, requeued.sequence) == (topics.ACTION_LIFECYCLE, "ActionRequeued", 3)
    assert requeued.data.last_error == "Invalid 'To' number"
    assert requeued.causation_id == failed.id
    # an SmsSent for the failed command must not complete the re-queued action
    await materialise.apply_batch(uow, [sms_sent(command.command_id, action_id)])
    assert uow.store[action_id].status is ActionStatus.QUEUED
    assert len(uow.outbox) == 3


async def test_results_are_scoped_by_tenant() -> None:
    uow = FakeUnitOfWork()
    action_id = await queue_action(uow)
    await queue.send_sms(uow, agent, action_id, body=None, now=NOW)
    command = uow.outbox[1][1].data
    with pytest.raises(materialise.UnprocessableMessage):
        await materialise.apply_batch(uow, [sms_sent(command.command_id, action_id, tenant="globex")])
    assert uow.store[action_id].status is ActionStatus.SENDING


async def test_call_then_call_completed_then_outcome() -> None:
    uow = FakeUnitOfWork()
    action_id = await queue_action(uow, action_type=ActionType.CALL)
    await queue.place_call(uow, agent, action_id, agent_phone="+14155550199", now=NOW)
    [(_, requested), (topic, command)] = uow.outbox
    assert (requested.type, requested.sequence) == ("ActionCallRequested", 2)
    assert topic == topics.CALL_COMMANDS
    assert command.type == "PlaceCall" and command.sequence == 1
    ended = wrap(CallCompleted(command_id=command.data.command_id, action_id=action_id,
                               call_status="completed", duration_seconds=42, ended_at=NOW),
                 tenant=TENANT, subject=action_id, source="dialer")
    await materialise.apply_batch(uow, [ended])
    assert uow.store[action_id].status is ActionStatus.AWAITING_OUTCOME
    assert uow.store[action_id].call_status == "completed"
    assert (uow.outbox[-1][1].type, uow.outbox[-1][1].sequence) == ("ActionCallEnded", 3)
    done = await queue.complete_action(uow, agent, action_id, outcome="connected", notes="Booked", now=NOW)
    assert done.status is ActionStatus.COMPLETED
    topic, completed = uow.outbox[-1]
    assert topic == topics.ACTION_LIFECYCLE
    assert (completed.type, completed.sequence, completed.data.outcome) == ("ActionCompleted", 4, "connected")
    assert completed.data.completed_by == AGENT


async def test_delete_publishes_action_deleted() -> None:
    uow = FakeUnitOfWork()
    action_id = await queue_action(uow)
    await queue.delete_action(uow, manager, action_id, reason="duplicate", now=NOW)
    topic, deleted = uow.outbox[-1]
    assert (topic, deleted.type, deleted.sequence) == (topics.ACTION_LIFECYCLE, "ActionDeleted", 2)
    assert deleted.data.deleted_by == manager.user_id
    with pytest.raises(InvalidTransition):
        await queue.delete_action(uow, manager, action_id, reason=None, now=NOW)


# --- visibility --------------------------------------------------------------------------------


async def test_agents_see_and_act_only_on_their_own_actions() -> None:
    uow = FakeUnitOfWork()
    action_id = await queue_action(uow)
    assert (await queue.get_action(uow, agent, action_id)).id == action_id
    assert (await queue.get_action(uow, manager, action_id)).id == action_id
    for attempt in (
        queue.get_action(uow, other_agent, action_id),
        queue.send_sms(uow, other_agent, action_id, body=None, now=NOW),
        queue.delete_action(uow, other_agent, action_id, reason=None, now=NOW),
        queue.get_action(uow, Actor("globex", None, supervisor=True), action_id),
    ):
        with pytest.raises(ActionNotFound):
            await attempt
    assert uow.outbox == []


async def test_agent_lists_only_their_own_actions() -> None:
    uow = FakeUnitOfWork()
    mine = await queue_action(uow)
    theirs = await queue_action(uow, assignee=OTHER_AGENT)
    page = await queue.list_actions(uow, agent, ActionFilter(), limit=10)
    assert [a.id for a in page.items] == [mine]
    page = await queue.list_actions(uow, agent, ActionFilter(assignee_user_id=OTHER_AGENT), limit=10)
    assert page.items == []
    page = await queue.list_actions(uow, manager, ActionFilter(), limit=10)
    assert {a.id for a in page.items} == {mine, theirs}
    with pytest.raises(NotAllowed):
        await queue.list_actions(uow, Actor(TENANT, None, supervisor=False), ActionFilter(), limit=10)


async def test_list_pages_by_cursor_and_hides_deleted_by_default() -> None:
    uow = FakeUnitOfWork()
    ids = [await queue_action(uow, queued_at=T0 + timedelta(minutes=i)) for i in range(5)]
    await queue.delete_action(uow, agent, ids[2], reason=None, now=NOW)
    first = await queue.list_actions(uow, agent, ActionFilter(), limit=2)
    assert [a.id for a in first.items] == ids[:2]
    assert first.next_cursor is not None
    second = await queue.list_actions(uow, agent, ActionFilter(), limit=2, after=first.next_cursor)
    assert [a.id for a in second.items] == [ids[3], ids[4]]
    assert second.next_cursor is None
    deleted = await queue.list_actions(uow, agent, ActionFilter(statuses=(ActionStatus.DELETED,)), limit=10)
    assert [a.id for a in deleted.items] == [ids[2]]


# --- Let's Start -------------------------------------------------------------------------------


async def test_reserve_next_takes_priority_then_age_and_returns_none_when_empty() -> None:
    uow = FakeUnitOfWork()
    old_low = await queue_action(uow, priority=0, queued_at=T0)
    new_high = await queue_action(uow, priority=5, queued_at=T0 + timedelta(minutes=5))
    old_high = await queue_action(uow, priority=5, queued_at=T0 + timedelta(minutes=1))
    await queue_action(uow, assignee=OTHER_AGENT, priority=100)
    got = [await queue.reserve_next(uow, agent, now=NOW) for _ in range(4)]
    assert [a.id if a else None for a in got] == [old_high, new_high, old_low, None]
    assert all(a.status is ActionStatus.RESERVED and a.reserved_by == AGENT for a in got if a)


async def test_a_lapsed_reservation_is_handed_out_again() -> None:
    uow = FakeUnitOfWork()
    action_id = await queue_action(uow)
    first = await queue.reserve_next(uow, agent, now=NOW, lease=timedelta(minutes=5))
    assert first is not None and first.id == action_id
    assert await queue.reserve_next(uow, agent, now=NOW + timedelta(minutes=4)) is None
    again = await queue.reserve_next(uow, agent, now=NOW + timedelta(minutes=5))
    assert again is not None and again.id == action_id


class _RacedUnitOfWork(FakeUnitOfWork):
    """Another device of the same agent reserves the candidate this one read, just before this one
    commits, ``races`` times (set once the actions are queued)."""

    races = 0

    async def commit(self) -> None:
        if self.races:
            self.races -= 1
            for action_id in self._repo.read_versions:
                self.store[action_id].reserve(AGENT, NOW, timedelta(minutes=5))
        await super().commit()


def _reserved_events(uow: FakeUnitOfWork) -> list[str]:
    return [e.subject for _, e in uow.outbox if e.type == "ActionReserved"]


async def test_an_action_another_device_took_meanwhile_is_passed_over_for_the_next() -> None:
    uow = _RacedUnitOfWork()
    first = await queue_action(uow, priority=5)
    second = await queue_action(uow, priority=1)
    uow.outbox.clear()
    uow.races = 1
    got = await queue.reserve_next(uow, agent, now=NOW)
    assert got is not None and got.id == second
    # This call published only its own reservation: nothing about the action it lost.
    assert _reserved_events(uow) == [str(second)]
    assert uow.statuses() == {first: ActionStatus.RESERVED, second: ActionStatus.RESERVED}


class _HeldUnitOfWork(FakeUnitOfWork):
    """Another transaction holds the actions in ``held`` (a manager's bulk chunk, say): a commit
    that would change one of them fails with nothing written, as the SQL unit of work's does."""

    held: frozenset[uuid.UUID] = frozenset()

    async def commit(self) -> None:
        for action_id in self.held & set(self._repo.read_versions):
            if self._work[action_id].version != self.store[action_id].version:
                raise ActionChanged(action_id)
        await super().commit()


async def test_an_action_another_transaction_holds_is_passed_over_and_left_as_it_was() -> None:
    uow = _HeldUnitOfWork()
    first = await queue_action(uow, priority=5)
    second = await queue_action(uow, priority=1)
    uow.outbox.clear()
    uow.held = frozenset({first})
    # Unchanged, the held action is still the head of the queue: this Let's Start must not read it
    # again, or it would pass it over until its limit and answer that nothing is available.
    got = await queue.reserve_next(uow, agent, now=NOW)
    assert got is not None and got.id == second
    assert _reserved_events(uow) == [str(second)]
    assert uow.statuses() == {first: ActionStatus.QUEUED, second: ActionStatus.RESERVED}
    uow.held = frozenset()
    again = await queue.reserve_next(uow, agent, now=NOW)
    assert again is not None and again.id == first


def _published(message_type: str) -> float:
    return REGISTRY.get_sample_value("action_queue_lifecycle_events_total", {"type": message_type}) or 0.0


async def test_only_committed_events_are_counted_as_published() -> None:
    uow = _RacedUnitOfWork()
    await queue_action(uow, priority=5)
    await queue_action(uow, priority=1)
    before = _published("ActionReserved")
    uow.races = 1  # the first candidate's reservation is staged, then lost: not published
    assert await queue.reserve_next(uow, agent, now=NOW) is not None
    assert _published("ActionReserved") == before + 1


async def test_a_start_gives_up_after_passing_over_its_limit_and_the_next_call_goes_on() -> None:
    uow = _RacedUnitOfWork()
    ids = [await queue_action(uow, priority=100 - i) for i in range(queue.MAX_PASSED_OVER_PER_START + 2)]
    uow.outbox.clear()
    uow.races = queue.MAX_PASSED_OVER_PER_START
    assert await queue.reserve_next(uow, agent, now=NOW) is None
    assert _reserved_events(uow) == []
    taken = queue.MAX_PASSED_OVER_PER_START
    assert [uow.store[i].status for i in ids] == [ActionStatus.RESERVED] * taken + [ActionStatus.QUEUED] * 2
    again = await queue.reserve_next(uow, agent, now=NOW)
    assert again is not None and again.id == ids[taken]


async def test_tokens_without_a_user_have_no_queue() -> None:
    with pytest.raises(NotAllowed):
        await queue.reserve_next(FakeUnitOfWork(), Actor(TENANT, None, supervisor=True),
                                 now=datetime.now(UTC))
