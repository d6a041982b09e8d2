"""Materialisation's SQL fast path (``adapters.materialise_sql``): its rows are exactly what the
domain's ``ManualAction.from_queued`` stored through the repository gives, and it works on the
real database whatever happened to the batch before it on the same connection."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from aq_factories import T0, action_queued
from aq_harness import Harness
from pydantic import TypeAdapter

from action_queue.adapters.materialise_sql import QUEUED_COLUMNS, insert_queued, queued_record
from action_queue.adapters.sql import _row
from action_queue.domain import ActionStatus, ManualAction
from action_queue.handlers.ports import NewAction
from manual_actions.contracts import ActionType

TENANT = "acme"

# Columns the fast path leaves to the table's defaults, with the value the domain gives them.
DEFAULTS: dict[str, Any] = {"command_sequence": 0}


# Queued times as they reach the fast path: built in Python, or parsed by pydantic from the wire
# (its own tzinfo class), with and without microseconds, at UTC and at other offsets. The history's
# "at" is written by orjson there and by ``isoformat()`` in the domain's row.
QUEUED_AT = [T0, T0.replace(microsecond=17002), T0.astimezone(timezone(timedelta(hours=5, minutes=30))),
             *(TypeAdapter(datetime).validate_json(f'"{text}"') for text in (
                 "2025-03-04T15:05:47.017002Z", "2025-03-04T15:05:47Z", "2025-03-04T15:05:47.1-07:00",
                 "0999-12-31T23:59:59.999999+00:01"))]


@pytest.mark.parametrize("kind", [ActionType.SMS, ActionType.CALL])
@pytest.mark.parametrize("timed", [False, True])
@pytest.mark.parametrize("queued_at", QUEUED_AT, ids=[q.isoformat() for q in QUEUED_AT])
def test_the_fast_row_is_the_domain_row(kind: ActionType, timed: bool, queued_at: datetime) -> None:
    event = action_queued(assignee=uuid.uuid4(), action_type=kind, priority=7, queued_at=queued_at)
    if timed:
        event = event.model_copy(update={"due_at": T0 + timedelta(hours=2),
                                         "expires_at": T0 + timedelta(days=1)})
    domain_row = _row(ManualAction.from_queued(TENANT, event, 3))
    fast_row = dict(zip(QUEUED_COLUMNS, queued_record(NewAction(TENANT, event, 3)), strict=True))
    fast_row["history"] = orjson.loads(fast_row["history"])
    assert {name: domain_row[name] for name in QUEUED_COLUMNS} == fast_row
    left_to_defaults = {name: value for name, value in domain_row.items() if name not in QUEUED_COLUMNS}
    assert left_to_defaults == {name: DEFAULTS.get(name) for name in left_to_defaults}


async def test_inserts_only_new_ids_and_survives_a_rolled_back_batch(aq: Harness) -> None:
    tenant = await aq.new_tenant()
    agent = uuid.uuid4()
    events = [action_queued(assignee=agent) for _ in range(5)]
    engine = aq.service.uow.engine
    # A first use of a connection that rolls back: its staging table is gone with the transaction.
    async with engine.connect() as conn:
        async with conn.begin() as transaction:
            assert await insert_queued(conn, [NewAction(tenant, events[0], 1)]) == {events[0].action_id}
            await transaction.rollback()
        async with conn.begin():
            inserted = await insert_queued(conn, [NewAction(tenant, e, 1) for e in events[:3]])
        assert inserted == {e.action_id for e in events[:3]}
        async with conn.begin():
            inserted = await insert_queued(conn, [NewAction(tenant, e, 1) for e in events])
        assert inserted == {e.action_id for e in events[3:]}  # the first three existed
    async with aq.service.uow() as uow:
        stored = [await uow.actions.get(tenant, e.action_id) for e in events]
    expected = [ManualAction.from_queued(tenant, e, 1) for e in events]
    assert stored == expected
    assert all(a is not None and a.status is ActionStatus.QUEUED for a in stored)


async def test_a_batch_with_a_stored_id_keeps_the_transactions_earlier_work(aq: Harness) -> None:
    """The direct COPY fails on the stored id; only it is undone (savepoint), not what the same
    transaction did before, and the staged insert then stores the new ids once."""
    tenant = await aq.new_tenant()
    events = [action_queued(assignee=uuid.uuid4()) for _ in range(4)]
    engine = aq.service.uow.engine
    async with engine.connect() as conn:
        async with conn.begin():
            assert await insert_queued(conn, [NewAction(tenant, events[0], 1)]) == {events[0].action_id}
            # Same transaction: events[0] is stored (uncommitted), so this COPY conflicts.
            inserted = await insert_queued(conn, [NewAction(tenant, e, 1) for e in events[:3]])
            assert inserted == {e.action_id for e in events[1:3]}
        # A conflicting batch in a transaction that rolls back leaves nothing, and the next works.
        async with conn.begin() as transaction:
            inserted = await insert_queued(conn, [NewAction(tenant, e, 1) for e in events])
            assert inserted == {events[3].action_id}
            await transaction.rollback()
        async with conn.begin():
            inserted = await insert_queued(conn, [NewAction(tenant, e, 1) for e in events])
            assert inserted == {events[3].action_id}
    async with aq.service.uow() as uow:
        stored = [await uow.actions.get(tenant, e.action_id) for e in events]
    assert stored == [ManualAction.from_queued(tenant, e, 1) for e in events]
