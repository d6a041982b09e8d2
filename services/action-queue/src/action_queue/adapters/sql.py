"""PostgreSQL implementations of the repository and the unit of work (SQLAlchemy Core, asyncpg)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from sqlalchemy import Select, and_, func, or_, select, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncTransaction

from action_queue.adapters.tables import manual_actions as t
from action_queue.domain import ActionStatus, Contact, ManualAction, Transition
from action_queue.handlers.ports import ActionFilter, Cursor
from manual_actions import outbox as outbox_plumbing
from manual_actions.contracts import ActionType, Envelope

# Columns a transition may change; everything else is the ActionQueued snapshot.
_MUTABLE = (
    "message", "status", "reserved_by", "lease_expires_at", "last_error", "call_status", "outcome",
    "notes", "pending_command_id", "command_sequence", "completed_at", "version", "history",
    "snoozed_until", "send_at", "scheduled_by", "status_reason", "assignee_user_id",
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
        "queued_at": action.queued_at,
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
        history=_history_from_json(row["history"]),
    )


def _like_pattern(text: str) -> str:
    """A LIKE pattern matching ``text`` anywhere, with LIKE's wildcards in ``text`` taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class SqlActionRepository:
    """Manual actions in PostgreSQL, on the unit of work's connection (and so its transaction)."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add_if_absent(self, action: ManualAction) -> bool:
        statement = (insert(t).values(**_row(action)).on_conflict_do_nothing(index_elements=[t.c.id])
                     .returning(t.c.id))
        return (await self._conn.execute(statement)).first() is not None

    async def tenant_of(self, action_id: uuid.UUID) -> str | None:
        result = await self._conn.execute(select(t.c.tenant_id).where(t.c.id == action_id))
        return result.scalar_one_or_none()

    async def get(self, tenant: str, action_id: uuid.UUID, *,
                  for_update: bool = False) -> ManualAction | None:
        statement = select(t).where(t.c.tenant_id == tenant, t.c.id == action_id)
        if for_update:
            statement = statement.with_for_update()
        row = (await self._conn.execute(statement)).mappings().first()
        return _action(row) if row else None

    async def save(self, action: ManualAction) -> None:
        result = await self._conn.execute(
            t.update().where(t.c.id == action.id, t.c.tenant_id == action.tenant)
            .values(**_mutable(action), updated_at=func.now()))
        if result.rowcount != 1:
            raise LookupError(f"manual action {action.id} of tenant {action.tenant} vanished while saving")

    async def next_reservable(self, tenant: str, assignee_user_id: uuid.UUID,
                              now: datetime) -> ManualAction | None:
        statement = (
            select(t)
            .where(
                t.c.tenant_id == tenant,
                t.c.assignee_user_id == assignee_user_id,
                or_(t.c.status == ActionStatus.QUEUED.value,
                    and_(t.c.status == ActionStatus.RESERVED.value, t.c.lease_expires_at <= now),
                    and_(t.c.status == ActionStatus.SNOOZED.value, t.c.snoozed_until <= now)),
            )
            .order_by(t.c.priority.desc(), t.c.queued_at, t.c.id)
            .limit(1)
            # SKIP LOCKED: a row another caller is reserving right now is not waited for but passed
            # over, so concurrent callers each get a different action.
            .with_for_update(skip_locked=True)
        )
        row = (await self._conn.execute(statement)).mappings().first()
        return _action(row) if row else None

    async def list(self, tenant: str, filters: ActionFilter, *, limit: int,
                   after: Cursor | None) -> Sequence[ManualAction]:
        statement: Select[Any] = select(t).where(t.c.tenant_id == tenant)
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
        if after is not None:
            statement = statement.where(tuple_(t.c.queued_at, t.c.id) > tuple_(after.queued_at, after.id))
        statement = statement.order_by(t.c.queued_at, t.c.id).limit(limit)
        rows = (await self._conn.execute(statement)).mappings().all()
        return [_action(row) for row in rows]


class SqlUnitOfWork:
    """One connection and one transaction; ``publish`` stages into the outbox of that transaction,
    ``first_time_seen`` records into its inbox."""

    actions: SqlActionRepository

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._conn: AsyncConnection | None = None
        self._tx: AsyncTransaction | None = None

    async def __aenter__(self) -> Self:
        self._conn = await self._engine.connect()
        self._tx = await self._conn.begin()
        self.actions = SqlActionRepository(self._conn)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            if self._tx is not None and self._tx.is_active:
                await self._tx.rollback()
        finally:
            if self._conn is not None:
                await self._conn.close()
            self._conn = self._tx = None

    @property
    def _connection(self) -> AsyncConnection:
        if self._conn is None:
            raise RuntimeError("the unit of work is used outside its 'async with' block")
        return self._conn

    async def commit(self) -> None:
        if self._tx is None:
            raise RuntimeError("the unit of work is used outside its 'async with' block")
        await self._tx.commit()

    async def publish(self, topic: str, envelope: Envelope[Any]) -> None:
        await outbox_plumbing.add_to_outbox(self._connection, topic, envelope)

    async def first_time_seen(self, consumer: str, message_id: uuid.UUID) -> bool:
        return await outbox_plumbing.first_time_seen(self._connection, consumer, message_id)


class SqlUnitOfWorkFactory:
    """Makes a fresh ``SqlUnitOfWork`` per use case on ``engine``."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    def __call__(self) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.engine)
