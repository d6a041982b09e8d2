"""PostgreSQL implementations of the repository and the unit of work (SQLAlchemy Core, asyncpg)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import asyncpg
from sqlalchemy import Select, all_, and_, bindparam, func, literal, or_, select, text, true, tuple_
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, insert
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from action_queue.adapters import materialise_sql
from action_queue.adapters.tables import bulk_requests as b
from action_queue.adapters.tables import contacts as c
from action_queue.adapters.tables import manual_actions as t
from action_queue.adapters.tables import outbox as outbox_table
from action_queue.adapters.tables import tenant_settings as ts
from action_queue.adapters.tables import users as u
from action_queue.domain import ActionStatus, Contact, ManualAction, Transition
from action_queue.domain.checks import ContactState, QuietHours
from action_queue.domain.model import IDLE, TERMINAL
from action_queue.domain.people import AWAY, OUT_OF_OFFICE, Outcome, OutOfOffice, QueueSettings, UserState
from action_queue.handlers.ports import (
    DEFAULT_SORT,
    SUMMARY_FIELDS,
    ActionChanged,
    ActionFilter,
    ActionSummary,
    BulkOperation,
    BulkRequest,
    BulkStatus,
    Cursor,
    NewAction,
    Sort,
)
from manual_actions import outbox as outbox_plumbing
from manual_actions.contracts import ActionType, Envelope
from manual_actions.db import DriverStatement

# Columns a transition may change; everything else is the ActionQueued snapshot.
_MUTABLE = (
    "message", "status", "reserved_by", "lease_expires_at", "last_error", "call_status", "outcome",
    "notes", "pending_command_id", "command_sequence", "completed_at", "version", "history",
    "snoozed_until", "send_at", "scheduled_by", "status_reason", "assignee_user_id",
    "due_at",  # ActionRescheduled changes it; effective_due_at follows (a generated column)
)


def _history_to_json(history: Sequence[Transition]) -> list[dict[str, Any]]:
    return [
        {"at": h.at.isoformat(), "from": h.from_status.value if h.from_status else None,
         "to": h.to_status.value, "by": str(h.by) if h.by else None, "reason": h.reason}
        for h in history
    ]


def _history_from_json(items: Sequence[dict[str, Any]]) -> list[Transition]:
    return [
        Transition(at=datetime.fromisoformat(h["at"]),
                   from_status=ActionStatus(h["from"]) if h.get("from") else None,
                   to_status=ActionStatus(h["to"]), by=uuid.UUID(h["by"]) if h.get("by") else None,
                   reason=h.get("reason"))
        for h in items
    ]


def _row(action: ManualAction) -> dict[str, Any]:
    return {
        "id": action.id,
        "tenant_id": action.tenant,
        "action_type": action.type.value,
        "action_name": action.action_name,
        "workflow_id": action.workflow_id,
        "workflow_name": action.workflow_name,
        "workflow_version": action.workflow_version,
        "step_id": action.step_id,
        "enrollment_id": action.enrollment_id,
        "contact_id": action.contact.id,
        "contact_name": action.contact.name,
        "contact_phone": action.contact.phone,
        "priority": action.priority,
        "expires_at": action.expires_at,
        "queued_at": action.queued_at,
        "due_at": action.due_at,
        "message_template": action.message_template,
        **_mutable(action),
    }


def _mutable(action: ManualAction) -> dict[str, Any]:
    values = {name: getattr(action, name) for name in _MUTABLE}
    values["status"] = action.status.value
    values["history"] = _history_to_json(action.history)
    return values


def _action(row: RowMapping) -> ManualAction:
    return ManualAction(
        id=row["id"],
        tenant=row["tenant_id"],
        type=ActionType(row["action_type"]),
        action_name=row["action_name"],
        workflow_id=row["workflow_id"],
        workflow_name=row["workflow_name"],
        workflow_version=row["workflow_version"],
        step_id=row["step_id"],
        enrollment_id=row["enrollment_id"],
        contact=Contact(id=row["contact_id"], name=row["contact_name"], phone=row["contact_phone"]),
        assignee_user_id=row["assignee_user_id"],
        message=row["message"],
        priority=row["priority"],
        status=ActionStatus(row["status"]),
        queued_at=row["queued_at"],
        version=row["version"],
        reserved_by=row["reserved_by"],
        lease_expires_at=row["lease_expires_at"],
        last_error=row["last_error"],
        call_status=row["call_status"],
        outcome=row["outcome"],
        notes=row["notes"],
        completed_at=row["completed_at"],
        pending_command_id=row["pending_command_id"],
        command_sequence=row["command_sequence"],
        snoozed_until=row["snoozed_until"],
        send_at=row["send_at"],
        scheduled_by=row["scheduled_by"],
        status_reason=row["status_reason"],
        expires_at=row["expires_at"],
        due_at=row["due_at"],
        message_template=row["message_template"],
        history=_history_from_json(row["history"]),
    )


# The columns of an ActionSummary, in its field order, the contact's three in place of ``contact``.
_SUMMARY_COLUMNS = tuple(
    column for name in SUMMARY_FIELDS
    for column in ((t.c.contact_id, t.c.contact_name, t.c.contact_phone) if name == "contact"
                   else (t.c.tenant_id,) if name == "tenant"
                   else (t.c.action_type,) if name == "type"
                   else (t.c[name],)))
_CONTACT_AT = SUMMARY_FIELDS.index("contact")
_TYPE_AT = SUMMARY_FIELDS.index("type")
_STATUS_AT = SUMMARY_FIELDS.index("status")


# Enum members by value: a dict lookup per row instead of the enum's (much slower) call.
_ACTION_TYPES = {member.value: member for member in ActionType}
_STATUSES = {member.value: member for member in ActionStatus}


def _summary(row: Sequence[Any]) -> ActionSummary:
    values = [*row[:_CONTACT_AT], Contact(*row[_CONTACT_AT:_CONTACT_AT + 3]), *row[_CONTACT_AT + 3:]]
    values[_TYPE_AT] = _ACTION_TYPES[values[_TYPE_AT]]
    values[_STATUS_AT] = _STATUSES[values[_STATUS_AT]]
    return ActionSummary(*values)


def _like_pattern(text: str) -> str:
    """A LIKE pattern matching ``text`` anywhere, with LIKE's wildcards in ``text`` taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@dataclass
class _ReadAhead:
    """Rows one unit of work read ahead of being asked for, so the repositories answer from memory
    within that transaction: Let's Start reads the tenant's settings, the caller's user and the
    action's contact in the statement that locks the action (its checks and proposal need them).
    A key present with None means "no such row". Writes through the repositories drop their key."""

    contacts: dict[tuple[str, uuid.UUID], ContactState | None] = field(default_factory=dict)
    users: dict[tuple[str, uuid.UUID], UserState | None] = field(default_factory=dict)
    settings: dict[str, QueueSettings] = field(default_factory=dict)


class _Staged:
    """Writes a unit of work holds back to send in one statement: the outbox rows ``publish``
    staged (with the relay's NOTIFY) and the UPDATE of at most one action that Let's Start locked
    (``SqlActionRepository.save``). ``flush`` writes them in the order they were made; the unit of
    work flushes before it commits, and the action repository before each of its statements while
    an UPDATE is held back, so no read in the transaction misses a held-back write and an UPDATE
    that finds its action changed (or gone) fails the use case (``ActionChanged``) before anything
    commits."""

    def __init__(self, *, optimistic: bool = False) -> None:
        self.save: tuple[ManualAction, dict[str, Any], bool] | None = None  # action, parameters, appending
        self.outbox: list[dict[str, Any]] = []
        # The unit of work's asyncpg connection while its transaction (or optimistic block) is open,
        # for DriverStatement without asking SQLAlchemy for it again.
        self.driver: asyncpg.Connection | None = None
        # No transaction: each flush must be one statement, and only the held-back UPDATE may write
        # an action (see SqlUnitOfWork).
        self.optimistic = optimistic

    def refuse_if_optimistic(self, what: str) -> None:
        if self.optimistic:
            raise RuntimeError(f"an optimistic unit of work cannot {what}: it has no transaction to "
                               "make it atomic with the rest")

    def clear(self) -> None:
        self.save, self.outbox = None, []

    async def flush_held_save(self, conn: AsyncConnection) -> None:
        """``flush`` if an UPDATE is held back (before a statement on the action table; outbox rows
        alone can wait for the commit: nothing reads them)."""
        if self.save is not None:
            await self.flush(conn)

    async def flush(self, conn: AsyncConnection) -> None:
        save, rows = self.save, self.outbox
        if save is None and not rows:
            return
        self.clear()
        parameters: dict[str, Any] = {}
        row: Any
        if save is not None and len(rows) == 1:
            # Let's Start's case, one statement on the driver: the UPDATE and one outbox row.
            parameters = {**save[1], **{f"o_{name}": value for name, value in rows[0].items()}}
            row = await _SAVE_AND_STAGE_ONE[save[2]].fetchrow(conn, parameters, driver=self.driver)
            rows = []
        else:
            self.refuse_if_optimistic("write anything but one action's change with its one event")
            columns: list[Any] = []
            if save is not None:
                saved = _HELD_SAVE[save[2]].returning(t.c.id).cte("saved")
                columns.append(select(func.count()).select_from(saved).scalar_subquery().label("saved"))
                parameters = save[1]
            first, rows = rows[:_OUTBOX_ROWS_PER_STATEMENT], rows[_OUTBOX_ROWS_PER_STATEMENT:]
            if first:
                columns.append(func.pg_notify(outbox_plumbing.OUTBOX_CHANNEL, "").label("notified"))
            statement = select(*columns)
            if first:
                statement = statement.add_cte(insert(outbox_table).values(first).cte("staged"))
            row = (await conn.execute(statement, parameters)).mappings().first()
        if save is not None and (row is None or row["saved"] != 1):
            raise ActionChanged(save[0].id)  # its outbox row was not written either (or is rolled back)
        # A batch's many messages: further statements, in order (PostgreSQL takes at most 32,767
        # parameters in one statement).
        for start in range(0, len(rows), _OUTBOX_ROWS_PER_STATEMENT):
            chunk = rows[start:start + _OUTBOX_ROWS_PER_STATEMENT]
            await conn.execute(select(func.pg_notify(outbox_plumbing.OUTBOX_CHANNEL, ""))
                               .add_cte(insert(outbox_table).values(chunk).cte("staged")))


_OUTBOX_ROWS_PER_STATEMENT = 1000  # six parameters each


def _next_reservable_statement(*, locking: bool, passing_over: bool = False) -> Any:
    """The assignee's first reservable action by (priority desc, effective due time, queued_at, id),
    with its contact (``c_`` columns), the assignee's user row (``u_``) and the tenant's settings
    (``s_``). Always one row: its action columns are null when nothing is reservable, the others
    when their row is missing. Parameters: ``tenant``, ``assignee``, ``now``.

    ``locking`` (inside a transaction): the action is locked, SKIP LOCKED, so a row another caller
    is reserving right now is passed over. Outside one a lock would end with the statement and
    still cost a transaction id and a commit record: the version check of the UPDATE that follows
    is what keeps two callers apart (docs/decisions/0026). ``passing_over``: the parameter
    ``passed_over`` lists actions not to return (those this Let's Start found held by another
    transaction, which an unlocking read would otherwise return again)."""
    tenant = bindparam("tenant", type_=t.c.tenant_id.type)
    assignee = bindparam("assignee", type_=t.c.assignee_user_id.type)
    now = bindparam("now", type_=t.c.queued_at.type)
    first = (
        select(t)
        .where(
            t.c.tenant_id == tenant,
            t.c.assignee_user_id == assignee,
            or_(t.c.status == ActionStatus.QUEUED.value,
                and_(t.c.status == ActionStatus.RESERVED.value, t.c.lease_expires_at <= now),
                and_(t.c.status == ActionStatus.SNOOZED.value, t.c.snoozed_until <= now)),
            or_(t.c.expires_at.is_(None), t.c.expires_at > now),
        )
        .order_by(t.c.priority.desc(), t.c.effective_due_at, t.c.queued_at, t.c.id)
        .limit(1)
    )
    if passing_over:
        first = first.where(t.c.id != all_(bindparam("passed_over", type_=ARRAY(t.c.id.type))))
    if locking:
        first = first.with_for_update(skip_locked=True)
    candidate = first.lateral("m")
    one = select(literal(1).label("one")).subquery("one")
    joined = (one.outerjoin(candidate, true())
              .outerjoin(c, and_(c.c.tenant_id == candidate.c.tenant_id,
                                 c.c.contact_id == candidate.c.contact_id))
              .outerjoin(u, and_(u.c.tenant_id == tenant, u.c.user_id == assignee))
              .outerjoin(ts, ts.c.tenant_id == tenant))
    return select(*candidate.c, *(col.label(f"c_{col.name}") for col in c.c),
                  *(col.label(f"u_{col.name}") for col in u.c),
                  *(col.label(f"s_{col.name}") for col in ts.c)).select_from(joined)


# Built once: constructing a statement this size (and its cache key) per call costs more CPU than
# running it. Run on the driver directly: Let's Start's hot path (docs/decisions/0025).
_NEXT_RESERVABLE = {(locking, passing_over): DriverStatement(_next_reservable_statement(
                        locking=locking, passing_over=passing_over))
                    for locking in (False, True) for passing_over in (False, True)}


def _save_statement(*, append_history: bool, checked: bool = False) -> Any:
    """UPDATE of every mutable column of one action (parameters ``key_id``, ``key_tenant`` and
    ``v_<column>``); with ``append_history`` the parameter ``v_history`` holds only the entries to
    append; ``checked`` updates only while the stored version is ``key_version`` (the one read)
    and the row is not locked by another transaction."""
    values: dict[str, Any] = {name: bindparam(f"v_{name}", type_=t.c[name].type) for name in _MUTABLE}
    if append_history:
        values["history"] = t.c.history.op("||")(bindparam("v_history", type_=JSONB))
    key = (t.c.id == bindparam("key_id", type_=t.c.id.type),
           t.c.tenant_id == bindparam("key_tenant", type_=t.c.tenant_id.type))
    statement = t.update().where(*key)
    if checked:
        # A row another transaction holds (a bulk chunk, a background loop changing it) is passed
        # over at once, as the locking read passes it over, instead of the caller waiting for that
        # transaction to end (docs/decisions/0026). NO KEY UPDATE: the lock the UPDATE takes anyway.
        unlocked = select(t.c.id).where(*key).with_for_update(skip_locked=True, key_share=True)
        statement = statement.where(t.c.version == bindparam("key_version", type_=t.c.version.type),
                                    t.c.id == unlocked.scalar_subquery())
    return statement.values(**values, updated_at=func.now())


_SAVE = _save_statement(append_history=False)
# The held-back UPDATE of an action next_reservable read (appending its history or not).
_HELD_SAVE = {appending: _save_statement(append_history=appending, checked=True)
              for appending in (False, True)}


def _save_and_stage_one_statement(*, append_history: bool) -> Any:
    """The held-back UPDATE, one outbox row (parameters ``o_<column>``), written only if the UPDATE
    found its row, and the relay's NOTIFY in one statement (atomic without a transaction); its
    column ``saved`` counts the rows updated."""
    saved = _HELD_SAVE[append_history].returning(t.c.id).cte("saved")
    row = [bindparam(f"o_{name}", type_=outbox_table.c[name].type) for name in _OUTBOX_COLUMNS]
    staged = (insert(outbox_table).from_select(list(_OUTBOX_COLUMNS), select(*row).select_from(saved))
              .cte("staged"))
    return select(select(func.count()).select_from(saved).scalar_subquery().label("saved"),
                  func.pg_notify(outbox_plumbing.OUTBOX_CHANNEL, "").label("notified")).add_cte(staged)


_OUTBOX_COLUMNS = ("message_id", "tenant", "topic", "key", "value", "headers")
_SAVE_AND_STAGE_ONE = {appending: DriverStatement(_save_and_stage_one_statement(append_history=appending))
                       for appending in (False, True)}


class SqlActionRepository:
    """Manual actions in PostgreSQL, on the unit of work's connection (and so its transaction)."""

    def __init__(self, conn: AsyncConnection, read_ahead: _ReadAhead | None = None,
                 staged: _Staged | None = None) -> None:
        self._conn = conn
        self._read_ahead = read_ahead if read_ahead is not None else _ReadAhead()
        self._staged = staged if staged is not None else _Staged()
        # Actions next_reservable read -> (the length of their history, their version) as stored:
        # ``save`` updates only while the version is still that one, and so appends only the newer
        # history entries (``history || new``) instead of rewriting the whole array.
        self._read: dict[uuid.UUID, tuple[int, int]] = {}

    async def add_if_absent(self, action: ManualAction) -> bool:
        statement = (insert(t).values(**_row(action)).on_conflict_do_nothing(index_elements=[t.c.id])
                     .returning(t.c.id))
        return (await self._conn.execute(statement)).first() is not None

    async def tenant_of(self, action_id: uuid.UUID) -> str | None:
        result = await self._conn.execute(select(t.c.tenant_id).where(t.c.id == action_id))
        return result.scalar_one_or_none()

    async def add_queued_if_absent(self, actions: Sequence[NewAction]) -> set[uuid.UUID]:
        return await materialise_sql.insert_queued(self._conn, actions)

    async def tenants_of(self, action_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
        result = await self._conn.execute(select(t.c.id, t.c.tenant_id).where(t.c.id.in_(list(action_ids))))
        return {action_id: tenant for action_id, tenant in result.all()}

    async def get(self, tenant: str, action_id: uuid.UUID, *,
                  for_update: bool = False) -> ManualAction | None:
        await self._staged.flush_held_save(self._conn)
        statement = select(t).where(t.c.tenant_id == tenant, t.c.id == action_id)
        if for_update:
            statement = statement.with_for_update()
        row = (await self._conn.execute(statement)).mappings().first()
        return _action(row) if row else None

    async def save(self, action: ManualAction) -> None:
        read = self._read.pop(action.id, None)
        stored = read[0] if read is not None else None
        appending = stored is not None and stored <= len(action.history)
        values = {f"v_{name}": getattr(action, name) for name in _MUTABLE}
        values["v_status"] = action.status.value
        values["v_history"] = _history_to_json(action.history[stored:] if appending else action.history)
        parameters = {**values, "key_id": action.id, "key_tenant": action.tenant}
        await self._staged.flush_held_save(self._conn)
        if read is not None:
            # Let's Start: held back to go with the outbox row in one statement (``_Staged``), and
            # written only while the action is as read.
            parameters["key_version"] = read[1]
            self._staged.save = (action, parameters, appending)
            return
        self._staged.refuse_if_optimistic("save an action next_reservable did not read")
        result = await self._conn.execute(_SAVE, parameters)
        if result.rowcount != 1:
            raise LookupError(f"manual action {action.id} of tenant {action.tenant} vanished while saving")

    async def next_reservable(self, tenant: str, assignee_user_id: uuid.UUID, now: datetime, *,
                              passing_over: Collection[uuid.UUID] = ()) -> ManualAction | None:
        await self._staged.flush_held_save(self._conn)
        # One round trip for everything Let's Start reads: the locked action, its contact (checks
        # at the moment of work, proposal), the caller (out of office, proposal: the caller is the
        # assignee) and the tenant's settings. The last three are kept for the repositories of
        # this unit of work to answer from (``_ReadAhead``).
        parameters: dict[str, Any] = {"tenant": tenant, "assignee": assignee_user_id, "now": now}
        if passing_over:
            parameters["passed_over"] = list(passing_over)
        statement = _NEXT_RESERVABLE[not self._staged.optimistic, bool(passing_over)]
        row = await statement.fetchrow(self._conn, parameters, driver=self._staged.driver)
        assert row is not None  # the statement always returns its one row
        read_ahead = self._read_ahead
        read_ahead.settings[tenant] = (_settings(row, "s_") if row["s_tenant_id"] is not None
                                       else QueueSettings())
        read_ahead.users[(tenant, assignee_user_id)] = (_user(row, "u_") if row["u_user_id"] is not None
                                                        else None)
        if row["id"] is None:
            return None
        action = _action(row)
        read_ahead.contacts[(tenant, action.contact.id)] = (
            _contact_state(row, "c_") if row["c_contact_id"] is not None else None)
        self._read[action.id] = (len(action.history), action.version)
        return action

    async def due(self, now: datetime, *, limit: int, tenant: str | None = None) -> Sequence[ManualAction]:
        await self._staged.flush_held_save(self._conn)
        # One query per kind of work so each uses its partial index; SKIP LOCKED lets several
        # replicas (and people working the queue) proceed without waiting for each other.
        kinds = [
            and_(t.c.status.in_([s.value for s in IDLE]), t.c.expires_at <= now),
            and_(t.c.status == ActionStatus.RESERVED.value, t.c.lease_expires_at <= now),
            and_(t.c.status == ActionStatus.SNOOZED.value, t.c.snoozed_until <= now),
            and_(t.c.status == ActionStatus.SCHEDULED.value, t.c.send_at <= now),
        ]
        found: dict[uuid.UUID, ManualAction] = {}
        for condition in kinds:
            if len(found) >= limit:
                break
            statement = select(t).where(condition)
            if tenant is not None:
                statement = statement.where(t.c.tenant_id == tenant)
            if found:
                statement = statement.where(t.c.id.not_in(list(found)))
            statement = statement.limit(limit - len(found)).with_for_update(skip_locked=True)
            for row in (await self._conn.execute(statement)).mappings().all():
                found[row["id"]] = _action(row)
        return list(found.values())

    async def list(self, tenant: str, filters: ActionFilter, *, limit: int, after: Cursor | None,
                   sort: Sort = DEFAULT_SORT) -> Sequence[ActionSummary]:
        await self._staged.flush_held_save(self._conn)
        statement = _filtered(select(*_SUMMARY_COLUMNS), tenant, filters)
        columns = [(t.c[name], descending) for name, descending in sort.columns]
        if after is not None:
            statement = statement.where(_after(columns, after.values))
        statement = statement.order_by(*(c.desc() if d else c.asc() for c, d in columns)).limit(limit)
        return [_summary(row) for row in (await self._conn.execute(statement)).all()]

    async def counts(self, tenant: str, filters: ActionFilter) -> dict[tuple[ActionStatus, ActionType], int]:
        await self._staged.flush_held_save(self._conn)
        statement = _filtered(select(t.c.status, t.c.action_type, func.count()), tenant,
                              replace(filters, statuses=()))
        rows = (await self._conn.execute(statement.group_by(t.c.status, t.c.action_type))).all()
        return {(ActionStatus(status), ActionType(kind)): int(n) for status, kind, n in rows}

    async def matching_ids(self, tenant: str, filters: ActionFilter, *, after: uuid.UUID | None,
                           limit: int) -> Sequence[uuid.UUID]:
        await self._staged.flush_held_save(self._conn)
        statement = _filtered(select(t.c.id), tenant, filters)
        if after is not None:
            statement = statement.where(t.c.id > after)
        rows = (await self._conn.execute(statement.order_by(t.c.id).limit(limit))).scalars().all()
        return list(rows)

    async def get_many(self, tenant: str, ids: Sequence[uuid.UUID]) -> Sequence[ManualAction]:
        await self._staged.flush_held_save(self._conn)
        statement = (select(t).where(t.c.tenant_id == tenant, t.c.id.in_(list(ids))).order_by(t.c.id)
                     .with_for_update())
        return [_action(row) for row in (await self._conn.execute(statement)).mappings().all()]

    async def save_many(self, actions: Sequence[ManualAction]) -> None:
        self._staged.refuse_if_optimistic("save many actions")
        await self._staged.flush_held_save(self._conn)
        # One statement for the whole chunk: the rows travel as one JSON array that PostgreSQL
        # unpacks with jsonb_to_recordset (an executemany of single-row UPDATEs is several times slower).
        if not actions:
            return
        rows = [{"id": str(a.id), "tenant_id": a.tenant, **_mutable(a)} for a in actions]
        result = await self._conn.execute(_SAVE_MANY, {"rows": json.dumps(rows, default=_json_default)})
        if result.rowcount != len(actions):
            raise LookupError(f"{len(actions) - result.rowcount} manual actions vanished while saving")


def _json_default(value: object) -> str:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot store {type(value).__name__} as JSON")


_SAVE_MANY_TYPES = {
    "message": "text", "status": "text", "reserved_by": "uuid", "lease_expires_at": "timestamptz",
    "last_error": "text", "call_status": "text", "outcome": "text", "notes": "text",
    "pending_command_id": "uuid",
    "command_sequence": "int", "completed_at": "timestamptz", "version": "int", "history": "jsonb",
    "snoozed_until": "timestamptz", "send_at": "timestamptz", "scheduled_by": "uuid", "status_reason": "text",
    "assignee_user_id": "uuid", "due_at": "timestamptz",
}
assert set(_SAVE_MANY_TYPES) == set(_MUTABLE), "every mutable column needs its SQL type here"
_SAVE_MANY = text(
    "UPDATE manual_actions AS m SET "
    + ", ".join(f"{name} = v.{name}" for name in _SAVE_MANY_TYPES)
    + ", updated_at = now()"
    + " FROM jsonb_to_recordset(CAST(CAST(:rows AS text) AS jsonb)) AS v(id uuid, tenant_id text, "
    + ", ".join(f"{name} {kind}" for name, kind in _SAVE_MANY_TYPES.items())
    + ") WHERE m.id = v.id AND m.tenant_id = v.tenant_id"
)


def _after(columns: Sequence[tuple[Any, bool]], values: Sequence[Any]) -> Any:
    """Keyset condition "strictly after ``values``" for columns sorted in mixed directions:
    (c1 beyond v1) OR (c1 = v1 AND ((c2 beyond v2) OR (c2 = v2 AND ...))). When every column runs
    the same way it is the row comparison PostgreSQL can serve from an index."""
    if all(not d for _, d in columns):
        return tuple_(*(c for c, _ in columns)) > tuple_(*values)
    if all(d for _, d in columns):
        return tuple_(*(c for c, _ in columns)) < tuple_(*values)
    (column, descending), value = columns[0], values[0]
    beyond = column < value if descending else column > value
    if len(columns) == 1:
        return beyond
    return or_(beyond, and_(column == value, _after(columns[1:], values[1:])))


def _filtered(statement: Select[Any], tenant: str, filters: ActionFilter) -> Select[Any]:
    """``statement`` limited to the tenant's actions that match ``filters``."""
    statement = statement.where(t.c.tenant_id == tenant)
    if filters.assignee_user_id is not None:
        statement = statement.where(t.c.assignee_user_id == filters.assignee_user_id)
    if filters.workflow_id is not None:
        statement = statement.where(t.c.workflow_id == filters.workflow_id)
    if filters.types:
        statement = statement.where(t.c.action_type.in_([x.value for x in filters.types]))
    if filters.statuses:
        statement = statement.where(t.c.status.in_([s.value for s in filters.statuses]))
    if filters.contact:
        pattern = _like_pattern(filters.contact)
        statement = statement.where(or_(t.c.contact_name.ilike(pattern, escape="\\"),
                                        t.c.contact_phone.ilike(pattern, escape="\\")))
    if filters.assignees is not None:
        statement = statement.where(t.c.assignee_user_id.in_(list(filters.assignees)))
    if filters.overdue is not None and filters.as_of is not None:
        overdue = and_(t.c.due_at.isnot(None), t.c.due_at < filters.as_of,
                       t.c.status.not_in([s.value for s in TERMINAL]))
        statement = statement.where(overdue if filters.overdue else ~overdue)
    if filters.queued_from is not None:
        statement = statement.where(t.c.queued_at >= filters.queued_from)
    if filters.queued_to is not None:
        statement = statement.where(t.c.queued_at < filters.queued_to)
    if filters.due_from is not None:
        statement = statement.where(t.c.effective_due_at >= filters.due_from)
    if filters.due_to is not None:
        statement = statement.where(t.c.effective_due_at < filters.due_to)
    return statement


def _filters_to_json(filters: ActionFilter) -> dict[str, Any]:
    return {
        "assignee_user_id": str(filters.assignee_user_id) if filters.assignee_user_id else None,
        "workflow_id": str(filters.workflow_id) if filters.workflow_id else None,
        "contact": filters.contact,
        "types": [x.value for x in filters.types],
        "statuses": [x.value for x in filters.statuses],
        "assignees": [str(x) for x in filters.assignees] if filters.assignees is not None else None,
        "overdue": filters.overdue,
        **{name: _iso(getattr(filters, name)) for name in _FILTER_TIMES},
    }


_FILTER_TIMES = ("as_of", "queued_from", "queued_to", "due_from", "due_to")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _time_or_none(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _uuid_or_none(value: str | None) -> uuid.UUID | None:
    return uuid.UUID(value) if value else None


def _filters_from_json(document: dict[str, Any]) -> ActionFilter:
    return ActionFilter(
        assignee_user_id=_uuid_or_none(document.get("assignee_user_id")),
        workflow_id=_uuid_or_none(document.get("workflow_id")),
        contact=document.get("contact"),
        types=tuple(ActionType(x) for x in document.get("types", [])),
        statuses=tuple(ActionStatus(x) for x in document.get("statuses", [])),
        assignees=(tuple(uuid.UUID(x) for x in document["assignees"])
                   if document.get("assignees") is not None else None),
        overdue=document.get("overdue"),
        **{name: _time_or_none(document.get(name)) for name in _FILTER_TIMES},
    )


_BULK_PROGRESS = ("status", "matched", "changed", "unchanged", "last_id", "finished_at")


def _bulk_row(request: BulkRequest) -> dict[str, Any]:
    return {
        "tenant_id": request.tenant, "request_id": request.request_id, "operation": request.operation.value,
        "filters": _filters_to_json(request.filters), "assignee_user_id": request.assignee_user_id,
        "until": request.until, "reason": request.reason, "requested_by": request.requested_by,
        "created_at": request.created_at, **_bulk_progress(request),
    }


def _bulk_progress(request: BulkRequest) -> dict[str, Any]:
    values = {name: getattr(request, name) for name in _BULK_PROGRESS}
    values["status"] = request.status.value
    return values


def _bulk(row: RowMapping) -> BulkRequest:
    return BulkRequest(
        tenant=row["tenant_id"], request_id=row["request_id"], operation=BulkOperation(row["operation"]),
        filters=_filters_from_json(row["filters"]), requested_by=row["requested_by"],
        created_at=row["created_at"], assignee_user_id=row["assignee_user_id"], until=row["until"],
        reason=row["reason"], status=BulkStatus(row["status"]), matched=row["matched"],
        changed=row["changed"], unchanged=row["unchanged"], last_id=row["last_id"],
        finished_at=row["finished_at"],
    )


class SqlBulkRequestStore:
    """Bulk requests in PostgreSQL, on the unit of work's connection."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add_if_absent(self, request: BulkRequest) -> BulkRequest:
        await self._conn.execute(insert(b).values(**_bulk_row(request))
                                 .on_conflict_do_nothing(index_elements=[b.c.tenant_id, b.c.request_id]))
        stored = await self.get(request.tenant, request.request_id)
        assert stored is not None  # inserted now or earlier, in this transaction's snapshot or before
        return stored

    async def get(self, tenant: str, request_id: str) -> BulkRequest | None:
        statement = select(b).where(b.c.tenant_id == tenant, b.c.request_id == request_id)
        row = (await self._conn.execute(statement)).mappings().first()
        return _bulk(row) if row else None

    async def next_running(self) -> BulkRequest | None:
        statement = (select(b).where(b.c.status == BulkStatus.RUNNING.value).order_by(b.c.created_at).limit(1)
                     .with_for_update(skip_locked=True))
        row = (await self._conn.execute(statement)).mappings().first()
        return _bulk(row) if row else None

    async def save(self, request: BulkRequest) -> None:
        await self._conn.execute(b.update().where(b.c.tenant_id == request.tenant,
                                                  b.c.request_id == request.request_id)
                                 .values(**_bulk_progress(request)))


def _contact_state(row: RowMapping, prefix: str = "") -> ContactState:
    def col(name: str) -> Any:
        return row[prefix + name]

    return ContactState(
        phone=col("phone"), timezone=col("timezone"),
        opted_out=frozenset(k for k, on in ((ActionType.SMS, col("opted_out_sms")),
                                            (ActionType.CALL, col("opted_out_call"))) if on),
        do_not_disturb=frozenset(k for k, on in ((ActionType.SMS, col("dnd_sms")),
                                                 (ActionType.CALL, col("dnd_call"))) if on),
        deleted=col("deleted"), version=col("version"), name=col("name"), email=col("email"),
        custom_fields=dict(col("custom_fields") or {}))


class SqlContactRepository:
    """Contacts' current state in PostgreSQL, on the unit of work's connection."""

    def __init__(self, conn: AsyncConnection, read_ahead: _ReadAhead | None = None) -> None:
        self._conn = conn
        self._read_ahead = read_ahead if read_ahead is not None else _ReadAhead()

    async def get(self, tenant: str, contact_id: uuid.UUID) -> ContactState | None:
        if (tenant, contact_id) in self._read_ahead.contacts:
            return self._read_ahead.contacts[(tenant, contact_id)]
        statement = select(c).where(c.c.tenant_id == tenant, c.c.contact_id == contact_id)
        row = (await self._conn.execute(statement)).mappings().first()
        return _contact_state(row) if row is not None else None

    async def upsert(self, tenant: str, contact_id: uuid.UUID, state: ContactState) -> bool:
        self._read_ahead.contacts.pop((tenant, contact_id), None)
        values = {
            "phone": state.phone, "timezone": state.timezone,
            "opted_out_sms": ActionType.SMS in state.opted_out,
            "opted_out_call": ActionType.CALL in state.opted_out,
            "dnd_sms": ActionType.SMS in state.do_not_disturb,
            "dnd_call": ActionType.CALL in state.do_not_disturb,
            "deleted": state.deleted, "version": state.version, "updated_at": func.now(),
            "name": state.name, "email": state.email, "custom_fields": state.custom_fields,
        }
        statement = (insert(c).values(tenant_id=tenant, contact_id=contact_id, **values)
                     .on_conflict_do_update(index_elements=[c.c.tenant_id, c.c.contact_id], set_=values,
                                            where=c.c.version < state.version)
                     .returning(c.c.contact_id))
        return (await self._conn.execute(statement)).first() is not None


def _user(row: RowMapping, prefix: str = "") -> UserState:
    def col(name: str) -> Any:
        return row[prefix + name]

    return UserState(user_id=col("user_id"), name=col("name"), role=col("role"), team_id=col("team_id"),
                     phone=col("phone"), timezone=col("timezone"), availability=col("availability"),
                     unavailable_from=col("unavailable_from"), unavailable_until=col("unavailable_until"),
                     deleted=col("deleted"), version=col("version"))


class SqlUserRepository:
    """The team directory (UserUpdated) in PostgreSQL, on the unit of work's connection."""

    def __init__(self, conn: AsyncConnection, read_ahead: _ReadAhead | None = None) -> None:
        self._conn = conn
        self._read_ahead = read_ahead if read_ahead is not None else _ReadAhead()

    async def get(self, tenant: str, user_id: uuid.UUID) -> UserState | None:
        if (tenant, user_id) in self._read_ahead.users:
            return self._read_ahead.users[(tenant, user_id)]
        statement = select(u).where(u.c.tenant_id == tenant, u.c.user_id == user_id)
        row = (await self._conn.execute(statement)).mappings().first()
        return _user(row) if row else None

    async def upsert(self, tenant: str, state: UserState) -> bool:
        self._read_ahead.users.pop((tenant, state.user_id), None)
        values = {
            "name": state.name, "team_id": state.team_id, "phone": state.phone, "timezone": state.timezone,
            "role": state.role, "availability": state.availability,
            "unavailable_from": state.unavailable_from, "unavailable_until": state.unavailable_until,
            "deleted": state.deleted, "version": state.version, "updated_at": func.now(),
        }
        statement = (insert(u).values(tenant_id=tenant, user_id=state.user_id, **values)
                     .on_conflict_do_update(index_elements=[u.c.tenant_id, u.c.user_id], set_=values,
                                            where=u.c.version < state.version)
                     .returning(u.c.user_id))
        return (await self._conn.execute(statement)).first() is not None

    async def team(self, tenant: str, team_id: uuid.UUID) -> Sequence[UserState]:
        statement = (select(u).where(u.c.tenant_id == tenant, u.c.team_id == team_id, u.c.deleted.is_(False))
                     .order_by(u.c.user_id))
        return [_user(row) for row in (await self._conn.execute(statement)).mappings().all()]

    async def out_with_queued(self, now: datetime, *, limit: int,
                              after: tuple[str, uuid.UUID] | None = None) -> Sequence[tuple[str, UserState]]:
        # Users whose absence (out_of_office, or away where the tenant counts it) covers ``now``, in
        # tenants that redistribute, who still have queued actions: absences that began after their
        # UserUpdated, or actions that reached them while out. Locked with SKIP LOCKED so replicas
        # share the work; paged by (tenant, user) so users nothing can be done for starve nobody.
        queued = (select(t.c.id).where(t.c.tenant_id == u.c.tenant_id, t.c.assignee_user_id == u.c.user_id,
                                       t.c.status == ActionStatus.QUEUED.value).exists())
        holds = select(ts.c.tenant_id).where(ts.c.tenant_id == u.c.tenant_id,
                                             ts.c.out_of_office == OutOfOffice.HOLD.value).exists()
        away_counts = select(ts.c.tenant_id).where(ts.c.tenant_id == u.c.tenant_id,
                                                   ts.c.away_counts_as_out.is_(True)).exists()
        statement = (select(u).where(
            or_(u.c.availability == OUT_OF_OFFICE, and_(u.c.availability == AWAY, away_counts)), ~holds,
            u.c.deleted.is_(False),
            or_(u.c.unavailable_from.is_(None), u.c.unavailable_from <= now),
            or_(u.c.unavailable_until.is_(None), u.c.unavailable_until > now), queued)
            .order_by(u.c.tenant_id, u.c.user_id).limit(limit).with_for_update(of=u, skip_locked=True))
        if after is not None:
            statement = statement.where(tuple_(u.c.tenant_id, u.c.user_id) > tuple_(*after))
        rows = (await self._conn.execute(statement)).mappings().all()
        return [(row["tenant_id"], _user(row)) for row in rows]


def _settings(row: RowMapping, prefix: str = "") -> QueueSettings:
    def col(name: str) -> Any:
        return row[prefix + name]

    return QueueSettings(
        outcomes=tuple(Outcome(o["slug"], o["label"]) for o in col("outcomes")),
        quiet_hours=QuietHours(start=col("quiet_start"), end=col("quiet_end")),
        out_of_office=OutOfOffice(col("out_of_office")), away_counts_as_out=col("away_counts_as_out"),
        version=col("version"))


class SqlSettingsRepository:
    """Tenant queue settings in PostgreSQL, on the unit of work's connection."""

    def __init__(self, conn: AsyncConnection, read_ahead: _ReadAhead | None = None) -> None:
        self._conn = conn
        self._read_ahead = read_ahead if read_ahead is not None else _ReadAhead()

    async def get(self, tenant: str) -> QueueSettings:
        if tenant in self._read_ahead.settings:
            return self._read_ahead.settings[tenant]
        row = (await self._conn.execute(select(ts).where(ts.c.tenant_id == tenant))).mappings().first()
        return _settings(row) if row is not None else QueueSettings()

    async def put(self, tenant: str, settings: QueueSettings, by: uuid.UUID | None) -> QueueSettings:
        self._read_ahead.settings.pop(tenant, None)
        values = {
            "outcomes": [{"slug": o.slug, "label": o.label} for o in settings.outcomes],
            "quiet_start": settings.quiet_hours.start, "quiet_end": settings.quiet_hours.end,
            "out_of_office": settings.out_of_office.value, "away_counts_as_out": settings.away_counts_as_out,
            "updated_by": by, "updated_at": func.now(),
        }
        statement = (insert(ts).values(tenant_id=tenant, version=1, **values)
                     .on_conflict_do_update(index_elements=[ts.c.tenant_id],
                                            set_={**values, "version": ts.c.version + 1})
                     .returning(ts.c.version))
        version = (await self._conn.execute(statement)).scalar_one()
        return replace(settings, version=version)


class SqlUnitOfWork:
    """One connection and one transaction; ``publish`` stages into the outbox of that transaction,
    ``first_time_seen`` records into its inbox.

    ``read_only``: no transaction at all, each statement on its own (autocommit), for use cases that
    only read: it saves the BEGIN and ROLLBACK round trips (measured: about 0.3 ms of CPU per use).
    ``commit`` and ``publish`` refuse to run in it. Locking reads (``for_update``, SKIP LOCKED) would
    lock nothing there: use cases that lock need a transaction.

    ``optimistic`` (Let's Start's, docs/decisions/0026): no transaction either, and no lock:
    ``next_reservable`` reads its candidate without locking it, and ``commit`` writes that action's
    held-back UPDATE, checked against the version read, with its one outbox row in one statement
    (atomic on its own), or raises ``ActionChanged`` having written nothing. Two round trips instead
    of four. Writes that could not be made atomic that way are refused (``RuntimeError``).

    Otherwise the transaction is the driver's: SQLAlchemy's connection is in autocommit mode and the
    unit of work sends BEGIN, COMMIT and ROLLBACK on the asyncpg connection itself, so statements
    run through SQLAlchemy and those run on the driver directly (``DriverStatement``, COPY) share it
    without a round trip to make SQLAlchemy begin first (docs/decisions/0025). Leaving the block
    without ``commit`` rolls back; a connection whose rollback fails is discarded, never pooled
    inside a transaction."""

    actions: SqlActionRepository
    bulk: SqlBulkRequestStore
    contacts: SqlContactRepository
    users: SqlUserRepository
    settings: SqlSettingsRepository

    def __init__(self, engine: AsyncEngine, *, read_only: bool = False, optimistic: bool = False) -> None:
        if read_only and optimistic:
            raise ValueError("a unit of work is read-only or optimistic, not both")
        self._engine = engine
        self._read_only = read_only
        self._conn: AsyncConnection | None = None
        # Outbox rows ``publish`` staged and Let's Start's held-back UPDATE, written in one statement
        # (with the NOTIFY) at commit at the latest; its ``driver`` is the asyncpg connection while
        # the transaction (or the optimistic block) is open.
        self._staged = _Staged(optimistic=optimistic)
        self._after_commit: list[Callable[[], None]] = []

    async def __aenter__(self) -> Self:
        self._conn = await self._engine.connect()
        await self._conn.execution_options(isolation_level="AUTOCOMMIT")
        if not self._read_only:
            driver = (await self._conn.get_raw_connection()).driver_connection
            assert isinstance(driver, asyncpg.Connection)
            if not self._staged.optimistic:
                try:
                    await driver.execute("BEGIN")
                except BaseException:
                    await self._discard()
                    raise
            self._staged.driver = driver
        read_ahead = _ReadAhead()
        self._staged.clear()
        self._after_commit = []
        self.actions = SqlActionRepository(self._conn, read_ahead, self._staged)
        self.bulk = SqlBulkRequestStore(self._conn)
        self.contacts = SqlContactRepository(self._conn, read_ahead)
        self.users = SqlUserRepository(self._conn, read_ahead)
        self.settings = SqlSettingsRepository(self._conn, read_ahead)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._staged.clear()  # an optimistic block left without commit: nothing of it was written
        self._after_commit = []
        driver, self._staged.driver = self._staged.driver, None
        if driver is not None and not self._staged.optimistic:
            try:
                await driver.execute("ROLLBACK")
            except BaseException as failure:
                await self._discard()
                if exc is None or isinstance(failure, asyncio.CancelledError):
                    raise
                # The block's own exception is the one to report (a cancellation above all, which
                # a loop must see to stop): the ROLLBACK failed because of it (e.g. the cancelled
                # statement closed the connection), and the connection is given up either way.
                return
        if self._conn is not None:
            await self._conn.close()
        self._conn = None

    async def _discard(self) -> None:
        """Close the connection for good (not back to the pool): its transaction state is unknown."""
        conn, self._conn, self._staged.driver = self._conn, None, None
        if conn is not None:
            await conn.invalidate()
            await conn.close()

    def _refuse_if_read_only(self, what: str) -> None:
        if self._read_only:
            raise RuntimeError(f"a read-only unit of work cannot {what}")

    @property
    def _connection(self) -> AsyncConnection:
        if self._conn is None:
            raise RuntimeError("the unit of work is used outside its 'async with' block")
        return self._conn

    async def commit(self) -> None:
        self._refuse_if_read_only("commit")
        if self._staged.driver is None:
            raise RuntimeError("the unit of work is used outside its 'async with' block or committed twice")
        if self._staged.optimistic:
            try:
                await self._staged.flush(self._connection)
            except ActionChanged:
                raise  # nothing written, the connection is fine
            except BaseException:
                await self._discard()  # e.g. the connection broke: whether the statement ran is unknown
                raise
            self._staged.driver = None
            self._committed()
            return
        await self._staged.flush(self._connection)
        driver, self._staged.driver = self._staged.driver, None
        try:
            await driver.execute("COMMIT")
        except BaseException:
            await self._discard()
            raise
        self._committed()

    def on_commit(self, callback: Callable[[], None]) -> None:
        self._after_commit.append(callback)

    def _committed(self) -> None:
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            callback()

    async def publish(self, topic: str, envelope: Envelope[Any]) -> None:
        # Staged in memory and written at commit at the latest, all rows and the relay's NOTIFY in one
        # statement (add_to_outbox costs two per message). Nothing in a unit of work reads the
        # outbox, and the rows keep the order of the calls, so the relay sees what add_to_outbox
        # would have written.
        self._connection  # noqa: B018 - raises outside the 'async with' block, like add_to_outbox
        self._refuse_if_read_only("publish")
        self._staged.outbox.append(_outbox_row(topic, envelope))

    async def publish_many(self, messages: Sequence[tuple[str, Envelope[Any]]]) -> None:
        # add_to_outbox writes one row and one NOTIFY per message; a bulk chunk writes its rows in
        # one statement and notifies the relay once.
        if not messages:
            return
        self._staged.refuse_if_optimistic("publish many messages")
        await self._staged.flush(self._connection)  # what ``publish`` staged first: the call order
        rows = [{"message_id": e.id, "tenant": e.tenant, "topic": topic, "key": e.subject,
                 "value": e.to_jsonable(),
                 "headers": [[name, value.decode()] for name, value in e.kafka_headers()]}
                for topic, e in messages]
        await self._connection.execute(insert(outbox_table), rows)
        await outbox_plumbing.notify_outbox(self._connection)

    async def first_time_seen(self, consumer: str, message_id: uuid.UUID) -> bool:
        return await outbox_plumbing.first_time_seen(self._connection, consumer, message_id)


def _outbox_row(topic: str, envelope: Envelope[Any]) -> dict[str, Any]:
    """The outbox row of ``envelope`` on ``topic``, as ``manual_actions.outbox.add_to_outbox`` writes it."""
    return {"message_id": envelope.id, "tenant": envelope.tenant, "topic": topic, "key": envelope.subject,
            "value": envelope.to_jsonable(),
            "headers": [[name, value.decode()] for name, value in envelope.kafka_headers()]}


class SqlUnitOfWorkFactory:
    """Makes a fresh ``SqlUnitOfWork`` per use case on ``engine`` (read-only ones with
    ``read_only``, optimistic ones with ``optimistic``)."""

    def __init__(self, engine: AsyncEngine, *, read_only: bool = False, optimistic: bool = False) -> None:
        self.engine = engine
        self.read_only = read_only
        self.optimistic = optimistic

    def __call__(self) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.engine, read_only=self.read_only, optimistic=self.optimistic)

    def reading(self) -> SqlUnitOfWorkFactory:
        """A factory of read-only units of work on the same engine."""
        return SqlUnitOfWorkFactory(self.engine, read_only=True)

    def claiming(self) -> SqlUnitOfWorkFactory:
        """A factory of optimistic units of work on the same engine, for Let's Start."""
        return SqlUnitOfWorkFactory(self.engine, optimistic=True)
