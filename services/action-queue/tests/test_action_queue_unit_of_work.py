"""The SQL unit of work's transaction on the real database: it is the driver's (BEGIN, COMMIT and
ROLLBACK sent on the asyncpg connection), so what it must guarantee is checked here: nothing of a
block left without ``commit`` stays, no connection returns to the pool inside a transaction, and a
connection whose transaction state is unknown is never reused. And the optimistic unit of work
(Let's Start's, no transaction): its commit writes an action's change with its event only while
the action is as it was read, and refuses what it could not write atomically."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from aq_factories import action_queued
from aq_harness import Harness
from sqlalchemy import func, select, text

from action_queue.adapters.sql import SqlUnitOfWork
from action_queue.adapters.tables import manual_actions, outbox
from action_queue.domain import ManualAction
from action_queue.handlers.ports import ActionChanged
from action_queue.handlers.publishing import publish
from manual_actions.db import create_engine, driver_connection


def _action(tenant: str) -> ManualAction:
    return ManualAction.from_queued(tenant, action_queued(assignee=uuid.uuid4()), 1)


async def _in_transaction_after_checkout(uow: SqlUnitOfWork) -> bool:
    engine = uow._engine
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        return (await driver_connection(conn)).is_in_transaction()


async def test_a_block_left_without_commit_keeps_nothing_and_pools_an_idle_connection(aq: Harness) -> None:
    tenant = await aq.new_tenant()
    engine = create_engine(aq.service.uow.engine.url, pool_size=1)
    try:
        kept, dropped, failed = _action(tenant), _action(tenant), _action(tenant)
        async with SqlUnitOfWork(engine) as uow:
            assert await uow.actions.add_if_absent(kept)
            await uow.commit()
        async with SqlUnitOfWork(engine) as uow:
            assert await uow.actions.add_if_absent(dropped)
        with pytest.raises(RuntimeError, match="use case failed"):
            async with SqlUnitOfWork(engine) as uow:
                assert await uow.actions.add_if_absent(failed)
                raise RuntimeError("use case failed")
        assert not await _in_transaction_after_checkout(uow)
        async with SqlUnitOfWork(engine) as uow:
            assert await uow.actions.get(tenant, kept.id) == kept
            assert await uow.actions.get(tenant, dropped.id) is None
            assert await uow.actions.get(tenant, failed.id) is None
            with pytest.raises(RuntimeError, match="committed twice"):
                await uow.commit()
                await uow.commit()
    finally:
        await engine.dispose()


async def test_a_connection_lost_inside_the_transaction_is_discarded_not_pooled(aq: Harness) -> None:
    tenant = await aq.new_tenant()
    engine = create_engine(aq.service.uow.engine.url, pool_size=1)
    try:
        # Whatever the driver raises for the lost connection (it depends on when the server's
        # goodbye arrives): the point is what happens to the connection afterwards.
        with pytest.raises(Exception):  # noqa: B017
            async with SqlUnitOfWork(engine) as uow:
                assert await uow.actions.add_if_absent(_action(tenant))
                pid = await uow._connection.scalar(text("SELECT pg_backend_pid()"))
                async with aq.service.uow.engine.connect() as other:
                    assert await other.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                await uow.commit()  # COMMIT on a dead connection
        # The next unit of work gets a working connection, and the lost transaction left nothing.
        async with SqlUnitOfWork(engine) as uow:
            assert await uow._connection.scalar(text("SELECT pg_backend_pid()")) != pid
            await uow.commit()
    finally:
        await engine.dispose()


async def test_a_cancelled_unit_of_work_reports_the_cancellation_not_its_failed_rollback(aq: Harness) -> None:
    # A background loop stops by cancellation: if the failed ROLLBACK after a cancelled statement
    # replaced the CancelledError, the loop would log an error and go on, and never stop.
    engine = create_engine(aq.service.uow.engine.url, pool_size=1)
    try:
        started = asyncio.Event()

        async def slow() -> None:
            async with SqlUnitOfWork(engine) as uow:
                started.set()
                await uow._connection.execute(text("SELECT pg_sleep(5)"))

        task = asyncio.create_task(slow())
        await started.wait()
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with SqlUnitOfWork(engine) as uow:  # and the pool still hands out a working connection
            assert await uow._connection.scalar(text("SELECT 1")) == 1
    finally:
        await engine.dispose()


async def _queued(aq: Harness) -> tuple[str, ManualAction, uuid.UUID]:
    """A queued action of a new tenant, stored: (tenant, action, assignee)."""
    tenant = await aq.new_tenant()
    action = _action(tenant)
    async with SqlUnitOfWork(aq.service.uow.engine) as uow:
        assert await uow.actions.add_if_absent(action)
        await uow.commit()
    assert action.assignee_user_id is not None
    return tenant, action, action.assignee_user_id


async def _status_and_events(aq: Harness, action_id: uuid.UUID, message_id: uuid.UUID) -> tuple[str, int]:
    async with aq.service.uow.engine.connect() as conn:
        status = await conn.scalar(select(manual_actions.c.status).where(manual_actions.c.id == action_id))
        events = await conn.scalar(select(func.count()).select_from(outbox)
                                   .where(outbox.c.message_id == message_id))
    return status, events


@pytest.mark.parametrize("changed_meanwhile", [False, True], ids=["as read", "changed meanwhile"])
async def test_an_optimistic_commit_writes_the_change_and_its_event_only_while_the_action_is_as_read(
        aq: Harness, changed_meanwhile: bool) -> None:
    tenant, action, assignee = await _queued(aq)
    now = datetime.now(UTC)
    async with SqlUnitOfWork(aq.service.uow.engine, optimistic=True) as uow:
        read = await uow.actions.next_reservable(tenant, assignee, now)
        assert read is not None and read.id == action.id
        pid = await uow._connection.scalar(text("SELECT pg_backend_pid()"))
        async with aq.service.uow.engine.connect() as other:
            # Nothing is locked, and no transaction is open, while the caller decides.
            locks = await other.scalar(text("SELECT count(*) FROM pg_locks WHERE pid = :pid "
                                            "AND locktype IN ('tuple', 'transactionid')"), {"pid": pid})
            state = await other.scalar(text("SELECT state FROM pg_stat_activity WHERE pid = :pid"),
                                       {"pid": pid})
            assert (locks, state) == (0, "idle")
            if changed_meanwhile:  # e.g. a manager reassigned it: any change advances the version
                await other.execute(manual_actions.update().where(manual_actions.c.id == action.id)
                                    .values(version=manual_actions.c.version + 1))
                await other.commit()
        event = read.reserve(assignee, now, timedelta(minutes=5))
        await uow.actions.save(read)
        envelope = await publish(uow, read, event)
        if changed_meanwhile:
            with pytest.raises(ActionChanged):
                await uow.commit()
        else:
            await uow.commit()
    expected = ("queued", 0) if changed_meanwhile else ("reserved", 1)
    assert await _status_and_events(aq, action.id, envelope.id) == expected


async def test_an_optimistic_unit_of_work_writes_nothing_without_commit_and_refuses_unchecked_writes(
        aq: Harness) -> None:
    tenant, action, assignee = await _queued(aq)
    now = datetime.now(UTC)
    async with SqlUnitOfWork(aq.service.uow.engine, optimistic=True) as uow:
        read = await uow.actions.next_reservable(tenant, assignee, now)
        assert read is not None
        event = read.reserve(assignee, now, timedelta(minutes=5))
        await uow.actions.save(read)
        envelope = await publish(uow, read, event)
    assert await _status_and_events(aq, action.id, envelope.id) == ("queued", 0)
    async with SqlUnitOfWork(aq.service.uow.engine, optimistic=True) as uow:
        loaded = await uow.actions.get(tenant, action.id)
        assert loaded is not None
        loaded.reserve(assignee, now, timedelta(minutes=5))
        with pytest.raises(RuntimeError, match="optimistic unit of work cannot save"):
            await uow.actions.save(loaded)  # not read by next_reservable: no version to check it against
