"""Materialisation's hot path: many ActionQueued into ``manual_actions`` with one binary ``COPY``.

The rows go to the server with a binary ``COPY`` straight into the table under a savepoint; only
when an id already exists (a redelivery) do they go through a per-connection temporary staging
table and one ``INSERT ... SELECT ... ON CONFLICT (id) DO NOTHING RETURNING id``. Measured against
the ``jsonb_to_recordset`` insert COPY replaced (docs/decisions/0018): the JSON text was parsed
twice by PostgreSQL (once while planning, because the parameter is a constant to the planner, once
in the function scan) and serialised once by us; COPY's binary rows cost neither. The staging
table is ``ON COMMIT DELETE ROWS``, so it is empty outside a transaction and a rolled-back batch
leaves nothing behind.

Rows are built straight from the event, without the domain object: ``queued_record`` must give
exactly what ``ManualAction.from_queued`` stored through the repository would (a unit test
compares the two for every column, so a column added to one side and not the other fails it).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from action_queue.handlers.ports import NewAction
from manual_actions.db import driver_connection

#: The columns an ActionQueued sets; every other column keeps its default (null, 0, now()).
QUEUED_COLUMNS: tuple[str, ...] = (
    "id", "tenant_id", "action_type", "action_name", "workflow_id", "workflow_name", "workflow_version",
    "step_id", "enrollment_id", "contact_id", "contact_name", "contact_phone", "assignee_user_id",
    "message", "priority", "expires_at", "queued_at", "due_at", "message_template", "status", "version",
    "history",
)

_STAGE = "manual_actions_queued_stage"
_CREATE_STAGE = text(
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} ON COMMIT DELETE ROWS AS "
    f"SELECT {', '.join(QUEUED_COLUMNS)} FROM manual_actions WITH NO DATA"
)
_SAVEPOINT = "SAVEPOINT materialise_copy"
_ROLLBACK_TO_SAVEPOINT = "ROLLBACK TO SAVEPOINT materialise_copy"
_MOVE = (
    f"INSERT INTO manual_actions ({', '.join(QUEUED_COLUMNS)}) "
    f"SELECT {', '.join(QUEUED_COLUMNS)} FROM {_STAGE} ON CONFLICT (id) DO NOTHING RETURNING id"
)

def queued_record(action: NewAction) -> tuple[Any, ...]:
    """The values of ``QUEUED_COLUMNS`` for a newly queued action, in that order."""
    event, queued_at = action.event, action.event.queued_at
    # orjson writes the datetime itself, exactly as ``isoformat()`` would (the unit test compares
    # them for several offsets and precisions) for a fraction of its cost: ``isoformat()`` was
    # about 2.7 µs of the row's 7 here.
    history = orjson.dumps([{"at": queued_at, "from": None, "to": "queued", "by": None,
                             "reason": f"queued by workflow step {event.step_id}"}]).decode()
    contact = event.contact
    return (event.action_id, action.tenant, event.action_type.value, event.action_name, event.workflow_id,
            event.workflow_name, event.workflow_version, event.step_id, event.enrollment_id,
            contact.contact_id, contact.name, contact.phone, event.assignee_user_id, event.message,
            event.priority, event.expires_at, queued_at, event.due_at, event.message_template, "queued",
            action.sequence, history)


async def insert_queued(conn: AsyncConnection, actions: Sequence[NewAction]) -> set[uuid.UUID]:
    """Insert the actions (distinct ids) whose id does not exist yet, inside ``conn``'s open
    transaction; the ids inserted.

    First a ``COPY`` straight into ``manual_actions`` under a savepoint: the common case, where no
    id exists yet, costs PostgreSQL no staging table written and read again (docs/decisions/0021).
    If an id exists (a redelivered batch), the primary key refuses the COPY, the savepoint undoes
    it, and the rows go through the staging table and ``ON CONFLICT (id) DO NOTHING``.
    """
    if not actions:
        return set()
    records = [queued_record(a) for a in actions]
    # Through SQLAlchemy: it begins the transaction on the server with this statement if nothing has
    # yet (``driver_connection`` would otherwise spend a statement of its own on that).
    await conn.execute(text(_SAVEPOINT))
    raw = await driver_connection(conn)
    try:
        await raw.copy_records_to_table("manual_actions", records=records, columns=QUEUED_COLUMNS)
    except asyncpg.UniqueViolationError:
        await raw.execute(_ROLLBACK_TO_SAVEPOINT)
    else:
        # Not released: the commit releases it, one round trip fewer.
        return {a.event.action_id for a in actions}
    # Every time: a staging table created in a transaction that then rolled back is gone again,
    # and the catalog check costs one short round trip per batch.
    await conn.execute(_CREATE_STAGE)
    await raw.copy_records_to_table(_STAGE, records=records, columns=QUEUED_COLUMNS)
    return {row[0] for row in await raw.fetch(_MOVE)}
