"""Unit tests (in-memory unit of work) of the queue order with due times, the directory handlers
(out of office, CancelAction, contacts v2), team scope, settings rules and the SMS proposal."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, time, timedelta

import pytest
from aq_factories import T0, action_queued, wrap
from aq_fakes import FakeUnitOfWork

from action_queue.domain import ActionStatus, Actor, InvalidField
from action_queue.domain.checks import ContactState, QuietHours
from action_queue.domain.people import Outcome, OutOfOffice, QueueSettings, UserState
from action_queue.handlers import directory, materialise, queue
from action_queue.handlers.ports import ActionFilter, Sort
from manual_actions.auth import Role
from manual_actions.contracts import ActionDeleted
from manual_actions.contracts.messages import Availability, CancelAction, UserUpdated

TENANT = "acme"
TEAM = uuid.uuid4()
NOW = T0 + timedelta(hours=1)
A1, A2, A3, M1 = (uuid.uuid4() for _ in range(4))


def user_updated(user_id: uuid.UUID, availability: str = "available", *, sequence: int = 1,
                 team_id: uuid.UUID = TEAM, role: str = "agent") -> object:
    event = UserUpdated(user_id=user_id, name="Someone", phone="+14155550100", role=role, team_id=team_id,
                        timezone="UTC", availability=Availability(status=availability), updated_at=NOW)
    return wrap(event, tenant=TENANT, subject=user_id, sequence=sequence, source="workflow-runner")


async def queue_action(uow: FakeUnitOfWork, **kwargs: object) -> uuid.UUID:
    event = action_queued(**{"assignee": A1, **kwargs})  # type: ignore[arg-type]
    await materialise.apply_batch(uow, [wrap(event, tenant=TENANT, subject=event.action_id)])
    return event.action_id


async def test_next_action_is_priority_then_due_time_then_age() -> None:
    uow = FakeUnitOfWork()
    late = await queue_action(uow, queued_at=T0, due_at=T0 + timedelta(days=1))
    undated = await queue_action(uow, queued_at=T0 + timedelta(minutes=1))
    early = await queue_action(uow, queued_at=T0 + timedelta(minutes=2), due_at=T0 - timedelta(hours=1))
    urgent = await queue_action(uow, queued_at=T0 + timedelta(minutes=3), priority=9,
                                due_at=T0 + timedelta(days=5))
    actor = Actor(TENANT, A1, supervisor=False)
    order = [(await queue.reserve_next(uow, actor, now=NOW)) for _ in range(4)]
    assert [a.id for a in order if a] == [urgent, early, undated, late]
    page = await queue.list_actions(uow, actor, ActionFilter(), limit=2, sort=Sort.parse("-priority"))
    rest = await queue.list_actions(uow, actor, ActionFilter(), limit=2, after=page.next_cursor,
                                    sort=Sort.parse("-priority"))
    assert [a.id for a in [*page.items, *rest.items]] == [urgent, early, undated, late]


async def test_out_of_office_redistributes_round_robin_only_queued_actions() -> None:
    uow = FakeUnitOfWork()
    await directory.apply_batch(uow, [user_updated(u) for u in (A1, A2, A3)], clock=lambda: NOW)  # type: ignore[list-item]
    ids = [await queue_action(uow, queued_at=T0 + timedelta(minutes=i)) for i in range(5)]
    await queue.reserve_next(uow, Actor(TENANT, A1, supervisor=False), now=NOW)  # ids[0] reserved
    await directory.apply_batch(uow, [user_updated(A1, "out_of_office", sequence=2)], clock=lambda: NOW)  # type: ignore[list-item]
    assignees = [uow.store[i].assignee_user_id for i in ids]
    assert assignees[0] == A1 and uow.store[ids[0]].status is ActionStatus.RESERVED
    first, second = sorted([A2, A3])
    assert assignees[1:] == [first, second, first, second]
    reasons = {e.data.reason for _, e in uow.outbox if e.type == "ActionReassigned"}
    assert reasons == {directory.OOO_REASON}
    # An older state arriving late changes nothing; hold moves nothing.
    await directory.apply_batch(uow, [user_updated(A1, "available", sequence=1)], clock=lambda: NOW)  # type: ignore[list-item]
    assert (await uow.users.get(TENANT, A1)).availability == "out_of_office"  # type: ignore[union-attr]


async def test_hold_moves_nothing_and_lets_start_offers_nothing() -> None:
    uow = FakeUnitOfWork()
    uow.tenant_settings[TENANT] = QueueSettings(out_of_office=OutOfOffice.HOLD)
    await directory.apply_batch(uow, [user_updated(u) for u in (A1, A2)], clock=lambda: NOW)  # type: ignore[list-item]
    action_id = await queue_action(uow)
    await directory.apply_batch(uow, [user_updated(A1, "out_of_office", sequence=2)], clock=lambda: NOW)  # type: ignore[list-item]
    assert uow.store[action_id].assignee_user_id == A1
    assert await queue.reserve_next(uow, Actor(TENANT, A1, supervisor=False), now=NOW) is None


def test_out_dates_and_away() -> None:
    user = UserState(A1, "x", "agent", availability="away", unavailable_from=NOW + timedelta(hours=1),
                     unavailable_until=NOW + timedelta(hours=2))
    assert not user.is_out(NOW, away_counts=True)
    assert user.is_out(NOW + timedelta(hours=1), away_counts=True)
    assert not user.is_out(NOW + timedelta(hours=1), away_counts=False)
    assert not user.is_out(NOW + timedelta(hours=2), away_counts=True)


async def test_cancel_action_is_idempotent_and_leaves_work_under_way() -> None:
    uow = FakeUnitOfWork()
    action_id = await queue_action(uow)
    enrollment = uow.store[action_id].enrollment_id
    command = CancelAction(command_id=uuid.uuid4(), action_id=action_id, enrollment_id=enrollment,
                           reason="enrollment stopped", requested_at=NOW)
    twice = [wrap(command, tenant=TENANT, subject=action_id, source="workflow-runner") for _ in range(2)]
    await directory.apply_batch(uow, twice, clock=lambda: NOW)
    deleted = [e for _, e in uow.outbox if isinstance(e.data, ActionDeleted)]
    assert len(deleted) == 1 and deleted[0].data.reason == "enrollment stopped"
    sending = await queue_action(uow)
    await queue.send_sms(uow, Actor(TENANT, A1, supervisor=False), sending, body=None, now=NOW)
    other = command.model_copy(update={"command_id": uuid.uuid4(), "action_id": sending,
                                       "enrollment_id": uow.store[sending].enrollment_id})
    await directory.apply_batch(uow, [wrap(other, tenant=TENANT, subject=sending)], clock=lambda: NOW)
    assert uow.store[sending].status is ActionStatus.SENDING


async def test_managers_are_scoped_to_their_team() -> None:
    uow = FakeUnitOfWork()
    outsider = uuid.uuid4()
    await directory.apply_batch(uow, [user_updated(M1, role="manager"), user_updated(A1),
                                      user_updated(outsider, team_id=uuid.uuid4())], clock=lambda: NOW)  # type: ignore[list-item]
    manager = await queue.resolve_actor(uow, TENANT, M1, Role.MANAGER)
    assert manager.team == frozenset({M1, A1})
    assert (await queue.resolve_actor(uow, TENANT, None, Role.ADMIN)).team is None
    lone = await queue.resolve_actor(uow, TENANT, uuid.uuid4(), Role.MANAGER)
    assert lone.team is not None and len(lone.team) == 1
    mine = await queue_action(uow)
    await queue_action(uow, assignee=outsider)
    page = await queue.list_actions(uow, manager, ActionFilter(), limit=10)
    assert [a.id for a in page.items] == [mine]
    with pytest.raises(InvalidField) as raised:
        await queue.reassign(uow, manager, mine, to=outsider, reason=None, now=NOW)
    assert raised.value.field == "assignee_user_id"


def test_settings_rules() -> None:
    with pytest.raises(InvalidField, match="listed twice"):
        QueueSettings(outcomes=(Outcome("a", "A"), Outcome("a", "B")))
    with pytest.raises(InvalidField) as raised:
        QueueSettings(quiet_hours=QuietHours(start=time(8), end=time(8)))
    assert raised.value.field == "quiet_hours.end"
    with pytest.raises(InvalidField) as raised:
        QueueSettings().check_outcome("sent")
    assert raised.value.field == "outcome"


async def test_proposal_renders_current_contact_data_and_falls_back_to_the_queued_text() -> None:
    uow = FakeUnitOfWork()
    contact_id = uuid.uuid4()
    template = "Hi {{contact.first_name}} {{contact.custom.x}}{{contact.custom.n}}"
    action_id = await queue_action(uow, contact_id=contact_id, message="Hi Ada", message_template=template)
    agent = Actor(TENANT, A1, supervisor=False)
    assert (await queue.get_action(uow, agent, action_id)).proposed_message == "Hi Ada"
    uow.contact_states[(TENANT, contact_id)] = ContactState(
        phone="+14155550100", timezone=None, version=1, name="Grace Hopper",
        custom_fields={"x": "{{y}}", "n": 3})
    assert (await queue.get_action(uow, agent, action_id)).proposed_message == "Hi Grace {{y}}3"
    sent = await queue.send_sms(uow, agent, action_id, body=None, now=datetime.now(UTC))
    assert sent.message == "Hi Grace {{y}}3"


async def test_an_absence_that_starts_later_is_acted_on_when_it_starts() -> None:
    uow = FakeUnitOfWork()
    await directory.apply_batch(uow, [user_updated(u) for u in (A1, A2)], clock=lambda: NOW)  # type: ignore[list-item]
    ids = [await queue_action(uow, queued_at=T0 + timedelta(minutes=i)) for i in range(2)]
    absence = Availability(status="out_of_office", unavailable_from=NOW + timedelta(hours=1))
    later = UserUpdated(user_id=A1, name="Someone", phone="+14155550100", role="agent", team_id=TEAM,
                        timezone="UTC", updated_at=NOW, availability=absence)
    await directory.apply_batch(uow, [wrap(later, tenant=TENANT, subject=A1, sequence=2)], clock=lambda: NOW)
    assert {uow.store[i].assignee_user_id for i in ids} == {A1}
    assert await directory.redistribute_due(uow, NOW + timedelta(minutes=30)) == 0
    assert await directory.redistribute_due(uow, NOW + timedelta(hours=2)) == 2
    assert {uow.store[i].assignee_user_id for i in ids} == {A2}
