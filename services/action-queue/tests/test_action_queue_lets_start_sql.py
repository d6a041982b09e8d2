"""Let's Start on the real database in as few statements as it can: the action read together with
its contact, the caller and the tenant's settings (read ahead for the unit of work; locked when in
a transaction), and its UPDATE held back to go with the outbox row in one statement at commit.
What it stores and stages must be what the plain repository calls would have stored and staged."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from aq_factories import T0, action_queued, wrap
from aq_harness import Harness
from sqlalchemy import event, select, text

from action_queue.adapters.sql import SqlUnitOfWorkFactory
from action_queue.adapters.tables import manual_actions, outbox
from action_queue.domain import ActionStatus, Actor, ManualAction
from action_queue.domain.checks import ContactState
from action_queue.domain.people import OUT_OF_OFFICE, OutOfOffice, QueueSettings, UserState
from action_queue.handlers import queue
from manual_actions.contracts import ActionType, topics

NOW = T0 + timedelta(hours=3)  # noon UTC: outside the default quiet hours


@contextmanager
def statements(aq: Harness) -> Iterator[list[str]]:
    """The SQL statements (cursor executes) this task runs on the service's engine inside the block
    (not those of the service's background loops, which share the engine)."""
    seen: list[str] = []
    task = asyncio.current_task()

    def record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if asyncio.current_task() is task:
            seen.append(statement)

    engine = aq.service.uow.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


async def _queue(aq: Harness, tenant: str, agent: uuid.UUID, *priorities: int) -> list[ManualAction]:
    actions = [ManualAction.from_queued(tenant, action_queued(assignee=agent, priority=p), 1)
               for p in priorities]
    async with aq.service.uow() as uow:
        for action in actions:
            assert await uow.actions.add_if_absent(action)
        await uow.commit()
    return actions


async def _outbox_of(aq: Harness, *subjects: uuid.UUID) -> list[tuple[str, int, str]]:
    """(type, sequence, subject) of the outbox rows about ``subjects``, in publication order."""
    async with aq.service.uow.engine.connect() as conn:
        rows = (await conn.execute(select(outbox.c.value).where(outbox.c.key.in_([str(s) for s in subjects]))
                                   .order_by(outbox.c.id))).scalars().all()
    return [(row["type"], row["sequence"], row["subject"]) for row in rows]


# Let's Start's units of work: the API's (optimistic, docs/decisions/0026) and a transactional one.
KINDS = ["optimistic", "transactional"]


def _units(aq: Harness, kind: str) -> SqlUnitOfWorkFactory:
    return aq.service.uow.claiming() if kind == "optimistic" else aq.service.uow


@pytest.mark.parametrize("kind", KINDS)
async def test_lets_start_is_two_statements_and_stores_what_the_domain_did(aq: Harness, kind: str) -> None:
    tenant = await aq.new_tenant()
    agent = uuid.uuid4()
    low, high = await _queue(aq, tenant, agent, 1, 5)
    # A lease that outlasts the real clock: the harness's maintenance loop releases lapsed leases.
    lease = timedelta(days=36500)
    with statements(aq) as seen:
        reserved = await queue.reserve_next(_units(aq, kind)(), Actor(tenant, agent, supervisor=False),
                                            now=NOW, lease=lease)
    assert reserved is not None and reserved.id == high.id
    assert len(seen) == 2, seen  # the read (with contact, user, settings); UPDATE + outbox + NOTIFY
    # Only inside a transaction is the candidate locked; the UPDATE checks the version either way.
    assert ("SKIP LOCKED" in seen[0]) is (kind == "transactional")
    assert "UPDATE manual_actions" in seen[1] and "INSERT INTO outbox" in seen[1] and "version" in seen[1]

    expected = replace(high, history=list(high.history))  # the domain's own transition, on a copy
    expected.reserve(agent, NOW, lease)
    async with aq.service.uow() as uow:
        stored = await uow.actions.get(tenant, high.id)
        untouched = await uow.actions.get(tenant, low.id)
    assert stored == expected  # history appended (``||``), every mutable column written
    assert stored is not None and [h.to_status for h in stored.history] == [ActionStatus.QUEUED,
                                                                          ActionStatus.RESERVED]
    assert untouched == low
    assert await _outbox_of(aq, high.id, low.id) == [("ActionReserved", 2, str(high.id))]


@pytest.mark.parametrize("kind", KINDS)
async def test_blocked_actions_are_skipped_and_everything_commits_in_order(aq: Harness, kind: str) -> None:
    tenant = await aq.new_tenant()
    agent = uuid.uuid4()
    blocked, fine = await _queue(aq, tenant, agent, 9, 1)
    async with aq.service.uow() as uow:
        await uow.contacts.upsert(tenant, blocked.contact.id, ContactState(
            phone=blocked.contact.phone, timezone=None, opted_out=frozenset({ActionType.SMS}), version=1))
        await uow.commit()
    with statements(aq) as seen:
        reserved = await queue.reserve_next(_units(aq, kind)(), Actor(tenant, agent, supervisor=False),
                                            now=NOW)
    assert reserved is not None and reserved.id == fine.id
    # read; the skip's UPDATE + outbox, committed; the next read; the reservation's UPDATE + outbox
    assert len(seen) == 4, seen
    async with aq.service.uow() as uow:
        skipped = await uow.actions.get(tenant, blocked.id)
    assert skipped is not None and skipped.status is ActionStatus.SKIPPED and skipped.status_reason
    assert await _outbox_of(aq, blocked.id, fine.id) == [("ActionSkipped", 2, str(blocked.id)),
                                                         ("ActionReserved", 2, str(fine.id))]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_candidate_another_transaction_holds_is_passed_over_without_waiting(
        aq: Harness, kind: str) -> None:
    tenant = await aq.new_tenant()
    agent = uuid.uuid4()
    held, free = await _queue(aq, tenant, agent, 9, 1)
    async with aq.service.uow.engine.connect() as other:
        # As a bulk chunk or a background loop holds the actions it is changing, for as long as
        # its transaction lasts.
        await other.execute(select(manual_actions.c.id).where(manual_actions.c.id == held.id)
                            .with_for_update())
        reserved = await asyncio.wait_for(
            queue.reserve_next(_units(aq, kind)(), Actor(tenant, agent, supervisor=False), now=NOW),
            timeout=5)
        await other.rollback()
    assert reserved is not None and reserved.id == free.id
    async with aq.service.uow() as uow:
        untouched = await uow.actions.get(tenant, held.id)
    assert untouched == held
    assert await _outbox_of(aq, held.id, free.id) == [("ActionReserved", 2, str(free.id))]


async def test_a_held_back_save_is_seen_by_the_next_read_and_lost_on_rollback(aq: Harness) -> None:
    tenant = await aq.new_tenant()
    agent = uuid.uuid4()
    (action,) = await _queue(aq, tenant, agent, 3)
    async with aq.service.uow() as uow:
        locked = await uow.actions.next_reservable(tenant, agent, NOW)
        assert locked is not None
        locked.reserve(agent, NOW, timedelta(minutes=5))
        await uow.actions.save(locked)
        seen = await uow.actions.get(tenant, action.id)
        assert seen is not None and seen.status is ActionStatus.RESERVED and seen.history == locked.history
        # no commit: rolled back
    async with aq.service.uow() as uow:
        assert await uow.actions.get(tenant, action.id) == action


async def test_what_was_read_ahead_gives_way_to_writes_in_the_same_unit_of_work(aq: Harness) -> None:
    tenant = await aq.new_tenant()
    agent = uuid.uuid4()
    (action,) = await _queue(aq, tenant, agent, 3)
    async with aq.service.uow() as uow:
        assert await uow.actions.next_reservable(tenant, agent, NOW) is not None
        with statements(aq) as seen:
            assert await uow.settings.get(tenant) == QueueSettings()
            assert await uow.users.get(tenant, agent) is None
            assert await uow.contacts.get(tenant, action.contact.id) is None
        assert seen == []  # answered from what the locked read brought
        settings = await uow.settings.put(tenant, QueueSettings(out_of_office=OutOfOffice.HOLD), None)
        await uow.users.upsert(tenant, UserState(user_id=agent, name="Grace", role="agent", version=1))
        await uow.contacts.upsert(tenant, action.contact.id, ContactState(phone="+14155550199", timezone=None,
                                                                          version=1))
        assert await uow.settings.get(tenant) == settings
        me = await uow.users.get(tenant, agent)
        assert me is not None and me.name == "Grace"
        contact = await uow.contacts.get(tenant, action.contact.id)
        assert contact is not None and contact.phone == "+14155550199"


async def test_a_held_caller_gets_nothing_and_locks_nothing(aq: Harness) -> None:
    tenant = await aq.new_tenant()
    agent = uuid.uuid4()
    (action,) = await _queue(aq, tenant, agent, 3)
    async with aq.service.uow() as uow:
        await uow.settings.put(tenant, QueueSettings(out_of_office=OutOfOffice.HOLD), None)
        await uow.users.upsert(tenant, UserState(user_id=agent, name="Grace", role="agent",
                                                 availability=OUT_OF_OFFICE, version=1))
        await uow.commit()
    assert await queue.reserve_next(aq.service.uow(), Actor(tenant, agent, supervisor=False), now=NOW) is None
    async with aq.service.uow() as uow:
        again = await uow.actions.next_reservable(tenant, agent, NOW)  # not left locked
    assert again == action
    assert await _outbox_of(aq, action.id) == []


async def test_a_read_only_unit_of_work_has_no_transaction_and_refuses_writes(aq: Harness) -> None:
    reads = aq.service.uow.reading()
    async with reads() as uow:
        conn = uow._connection  # what the repositories run on
        first = (await conn.execute(text("SELECT now()"))).scalar_one()
        await asyncio.sleep(0.01)
        second = (await conn.execute(text("SELECT now()"))).scalar_one()
        assert second > first  # now() is the transaction's start: each statement was its own
        with pytest.raises(RuntimeError, match="read-only"):
            await uow.publish("x", None)  # refused before the envelope is looked at
        with pytest.raises(RuntimeError, match="read-only"):
            await uow.commit()
    async with aq.service.uow() as uow:
        conn = uow._connection
        first = (await conn.execute(text("SELECT now()"))).scalar_one()
        await asyncio.sleep(0.01)
        assert (await conn.execute(text("SELECT now()"))).scalar_one() == first


async def test_many_staged_messages_are_written_in_order_in_chunks(aq: Harness) -> None:
    tenant = await aq.new_tenant()
    envelopes = [wrap(action_queued(), tenant=tenant, subject=uuid.uuid4(), sequence=1) for _ in range(2_100)]
    async with aq.service.uow() as uow:
        for envelope in envelopes:
            await uow.publish(topics.ACTION_LIFECYCLE, envelope)
        await uow._staged.flush(uow._connection)  # what commit does first; rolled back below
        query = select(outbox.c.message_id).where(outbox.c.tenant == tenant).order_by(outbox.c.id)
        written = (await uow._connection.execute(query)).scalars().all()
    assert written == [e.id for e in envelopes]
