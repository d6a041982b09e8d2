"""PostgreSQL implementations of the repositories and the unit of work (SQLAlchemy Core, asyncpg).

Every statement filters by ``tenant_id``; rows are mapped to and from the domain's dataclasses here.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import orjson
from sqlalchemy import (
    Column,
    ColumnElement,
    MetaData,
    Select,
    Table,
    and_,
    delete,
    func,
    literal,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncTransaction

from manual_actions import outbox as outbox_plumbing
from manual_actions.contracts import Envelope
from manual_actions.db import driver_connection
from workflow_runner.adapters import tables as t
from workflow_runner.domain.directory import (
    Availability,
    AvailabilityStatus,
    ChannelFlags,
    Team,
    WorkingHours,
)
from workflow_runner.domain.enrollments import (
    ActionStatus,
    ActionType,
    Enrollment,
    EnrollmentStatus,
    HistoryEntry,
    HistoryEvent,
    ManualAction,
    Timer,
    TimerKind,
)
from workflow_runner.domain.people import Contact, User, UserRole
from workflow_runner.domain.workflows import VersionStatus, Workflow, WorkflowVersion
from workflow_runner.handlers.ports import (
    ActionRepository,
    ContactFilter,
    ContactRepository,
    Cursor,
    EnrollmentRepository,
    RoundRobinRepository,
    TeamRepository,
    TimerRepository,
    UserRepository,
    WorkflowRepository,
)


class _Repository:
    def __init__(self, uow: SqlUnitOfWork) -> None:
        self._uow = uow

    @property
    def _conn(self) -> AsyncConnection:
        return self._uow.connection

    async def _first(self, statement: Select[Any]) -> RowMapping | None:
        return (await self._conn.execute(statement)).mappings().first()

    async def _all(self, statement: Select[Any]) -> Sequence[RowMapping]:
        return (await self._conn.execute(statement)).mappings().all()


# --- teams ---------------------------------------------------------------------------------------


def _team(row: RowMapping) -> Team:
    return Team(
        id=row["id"],
        tenant=row["tenant_id"],
        name=row["name"],
        description=row["description"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _after(table: Table, after: Cursor | None) -> list[ColumnElement[bool]]:
    """Keyset condition: rows strictly after ``after`` in (created_at, id) order."""
    if after is None:
        return []
    return [tuple_(table.c.created_at, table.c.id) > tuple_(literal(after[0]), literal(after[1]))]


class SqlTeamRepository(_Repository):
    async def add(self, team: Team) -> None:
        await self._conn.execute(
            t.teams.insert().values(
                tenant_id=team.tenant,
                id=team.id,
                name=team.name,
                description=team.description,
                created_at=team.created_at,
                updated_at=team.updated_at,
            )
        )

    async def get(self, tenant: str, team_id: uuid.UUID, *, for_update: bool = False) -> Team | None:
        statement = select(t.teams).where(t.teams.c.tenant_id == tenant, t.teams.c.id == team_id)
        row = await self._first(statement.with_for_update() if for_update else statement)
        return _team(row) if row else None

    async def get_by_name(self, tenant: str, name: str) -> Team | None:
        row = await self._first(select(t.teams).where(t.teams.c.tenant_id == tenant, t.teams.c.name == name))
        return _team(row) if row else None

    async def update(self, team: Team) -> None:
        await self._conn.execute(
            update(t.teams)
            .where(t.teams.c.tenant_id == team.tenant, t.teams.c.id == team.id)
            .values(name=team.name, description=team.description, updated_at=team.updated_at)
        )

    async def delete(self, tenant: str, team_id: uuid.UUID) -> None:
        # Deleted users may still point at the team; they lose it with the team.
        await self._conn.execute(
            update(t.users)
            .where(
                t.users.c.tenant_id == tenant, t.users.c.team_id == team_id, t.users.c.deleted_at.is_not(None)
            )
            .values(team_id=None)
        )
        await self._conn.execute(
            delete(t.teams).where(t.teams.c.tenant_id == tenant, t.teams.c.id == team_id)
        )

    async def count_members(self, tenant: str, team_id: uuid.UUID) -> int:
        u = t.users.c
        result = await self._conn.execute(
            select(func.count())
            .select_from(t.users)
            .where(u.tenant_id == tenant, u.team_id == team_id, u.deleted_at.is_(None))
        )
        return int(result.scalar_one())

    async def list(self, tenant: str, *, limit: int, after: Cursor | None = None) -> Sequence[Team]:
        rows = await self._all(
            select(t.teams)
            .where(t.teams.c.tenant_id == tenant, *_after(t.teams, after))
            .order_by(t.teams.c.created_at, t.teams.c.id)
            .limit(limit)
        )
        return [_team(row) for row in rows]


# --- users ---------------------------------------------------------------------------------------


def _user(row: RowMapping) -> User:
    return User(
        id=row["id"],
        tenant=row["tenant_id"],
        name=row["name"],
        phone=row["phone"],
        role=UserRole(row["role"]),
        created_at=row["created_at"],
        team_id=row["team_id"],
        timezone=row["timezone"],
        availability=Availability(
            AvailabilityStatus(row["availability"]), row["unavailable_from"], row["unavailable_until"]
        ),
        working_hours=WorkingHours.parse(row["working_hours"]),
        updated_at=row["updated_at"] or row["created_at"],
        version=row["version"],
        deleted_at=row["deleted_at"],
    )


def _user_values(user: User) -> dict[str, Any]:
    return {
        "name": user.name,
        "phone": user.phone,
        "role": user.role.value,
        "team_id": user.team_id,
        "timezone": user.timezone,
        "availability": user.availability.status.value,
        "unavailable_from": user.availability.unavailable_from,
        "unavailable_until": user.availability.unavailable_until,
        "working_hours": user.working_hours.as_dict() if user.working_hours is not None else None,
        "updated_at": user.updated_at,
        "version": user.version,
        "deleted_at": user.deleted_at,
    }


class SqlUserRepository(_Repository):
    async def add(self, user: User) -> None:
        await self._conn.execute(
            t.users.insert().values(
                tenant_id=user.tenant, id=user.id, created_at=user.created_at, **_user_values(user)
            )
        )

    async def get(
        self, tenant: str, user_id: uuid.UUID, *, for_update: bool = False, include_deleted: bool = False
    ) -> User | None:
        statement = select(t.users).where(t.users.c.tenant_id == tenant, t.users.c.id == user_id)
        if not include_deleted:
            statement = statement.where(t.users.c.deleted_at.is_(None))
        row = await self._first(statement.with_for_update() if for_update else statement)
        return _user(row) if row else None

    async def get_many(
        self, tenant: str, user_ids: Collection[uuid.UUID], *, include_deleted: bool = False
    ) -> dict[uuid.UUID, User]:
        if not user_ids:
            return {}
        statement = select(t.users).where(t.users.c.tenant_id == tenant, t.users.c.id.in_(list(user_ids)))
        if not include_deleted:
            statement = statement.where(t.users.c.deleted_at.is_(None))
        return {row["id"]: _user(row) for row in await self._all(statement)}

    async def update(self, user: User) -> None:
        await self._conn.execute(
            update(t.users)
            .where(t.users.c.tenant_id == user.tenant, t.users.c.id == user.id)
            .values(**_user_values(user))
        )

    async def list(
        self,
        tenant: str,
        *,
        limit: int,
        after: Cursor | None = None,
        role: str | None = None,
        team_id: uuid.UUID | None = None,
        availability: str | None = None,
    ) -> Sequence[User]:
        u = t.users.c
        conditions: list[ColumnElement[bool]] = [u.tenant_id == tenant, u.deleted_at.is_(None)]
        if role is not None:
            conditions.append(u.role == role)
        if team_id is not None:
            conditions.append(u.team_id == team_id)
        if availability is not None:
            conditions.append(u.availability == availability)
        rows = await self._all(
            select(t.users)
            .where(*conditions, *_after(t.users, after))
            .order_by(u.created_at, u.id)
            .limit(limit)
        )
        return [_user(row) for row in rows]


# --- contacts ------------------------------------------------------------------------------------


def _contact(row: RowMapping) -> Contact:
    return Contact(
        id=row["id"],
        tenant=row["tenant_id"],
        name=row["name"],
        first_name=row["first_name"],
        last_name=row["last_name"],
        phone=row["phone"],
        email=row["email"],
        timezone=row["timezone"],
        custom_fields=dict(row["custom_fields"]),
        owner_user_id=row["owner_user_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        tags=list(row["tags"]),
        opted_out=ChannelFlags(sms=row["opted_out_sms"], call=row["opted_out_call"]),
        do_not_disturb=ChannelFlags(sms=row["dnd_sms"], call=row["dnd_call"]),
        external_id=row["external_id"],
        version=row["version"],
        deleted_at=row["deleted_at"],
    )


def contact_values(contact: Contact) -> dict[str, Any]:
    """Column values of a contact, except tenant_id, id and created_at."""
    return {
        "name": contact.name,
        "first_name": contact.first_name,
        "last_name": contact.last_name,
        "phone": contact.phone,
        "email": contact.email,
        "timezone": contact.timezone,
        "custom_fields": contact.custom_fields,
        "owner_user_id": contact.owner_user_id,
        "updated_at": contact.updated_at,
        "tags": contact.tags,
        "opted_out_sms": contact.opted_out.sms,
        "opted_out_call": contact.opted_out.call,
        "dnd_sms": contact.do_not_disturb.sms,
        "dnd_call": contact.do_not_disturb.call,
        "external_id": contact.external_id,
        "version": contact.version,
        "deleted_at": contact.deleted_at,
    }


# Which columns an import replaces on an existing contact, per contact field the input sets.
IMPORT_COLUMNS: dict[str, tuple[str, ...]] = {
    "name": ("name", "first_name", "last_name"),
    "first_name": ("name", "first_name", "last_name"),
    "last_name": ("name", "first_name", "last_name"),
    "phone": ("phone",),
    "email": ("email",),
    "timezone": ("timezone",),
    "custom_fields": ("custom_fields",),
    "owner_user_id": ("owner_user_id",),
    "tags": ("tags",),
    "opted_out": ("opted_out_sms", "opted_out_call"),
    "do_not_disturb": ("dnd_sms", "dnd_call"),
}


def outbox_records(topic: str, documents: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Outbox rows for envelope documents, in ``OUTBOX_COPY_COLUMNS`` order, as ``add_to_outbox``
    writes them (key = subject; type, version and tenant headers); the headers text is built once
    per distinct (type, version, tenant)."""
    headers: dict[tuple[str, int, str], str] = {}
    records = []
    for d in documents:
        marker = (d["type"], d["version"], d["tenant"])
        text_headers = headers.get(marker)
        if text_headers is None:
            text_headers = headers[marker] = json.dumps(
                [["type", d["type"]], ["version", str(d["version"])], ["tenant", d["tenant"]]]
            )
        records.append(
            (
                uuid.UUID(d["id"]),
                d["tenant"],
                topic,
                d["subject"],
                orjson.dumps(d).decode(),
                text_headers,
            )
        )
    return records


async def copy_documents_to_outbox(
    conn: AsyncConnection, topic: str, documents: Sequence[dict[str, Any]]
) -> None:
    """Stage envelope documents in the outbox with COPY (``outbox_records``), in ``conn``'s
    transaction, and notify the relay."""
    if not documents:
        return
    driver = await driver_connection(conn)
    await driver.copy_records_to_table(
        "outbox", columns=outbox_plumbing.OUTBOX_COPY_COLUMNS, records=outbox_records(topic, documents)
    )
    await outbox_plumbing.notify_outbox(conn)


def _copy_record(columns: Sequence[str], contact: Contact) -> tuple[Any, ...]:
    values = {"tenant_id": contact.tenant, "id": contact.id, "created_at": contact.created_at}
    values |= contact_values(contact)
    values["custom_fields"] = json.dumps(values["custom_fields"])  # asyncpg takes jsonb as text
    return tuple(values[name] for name in columns)


def contact_conditions(tenant: str, f: ContactFilter) -> list[ColumnElement[bool]]:
    """The WHERE conditions of a contact listing (``GET /v1/contacts``) for ``f``."""
    c = t.contacts.c
    conditions: list[ColumnElement[bool]] = [c.tenant_id == tenant, c.deleted_at.is_(None)]
    if f.tag is not None:
        conditions.append(c.tags.contains([f.tag]))
    if f.owner_user_id is not None:
        conditions.append(c.owner_user_id == f.owner_user_id)
    if f.unassigned is not None:
        conditions.append(c.owner_user_id.is_(None) if f.unassigned else c.owner_user_id.is_not(None))
    if f.phone is not None:
        conditions.append(c.phone == f.phone)
    if f.email is not None:
        conditions.append(func.lower(c.email) == f.email.lower())
    if f.external_id is not None:
        conditions.append(c.external_id == f.external_id)
    if f.name_contains is not None:
        escaped = f.name_contains.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conditions.append(c.name.ilike(f"%{escaped}%"))
    return conditions


class SqlContactRepository(_Repository):
    async def add(self, contact: Contact) -> None:
        await self._conn.execute(
            t.contacts.insert().values(
                tenant_id=contact.tenant,
                id=contact.id,
                created_at=contact.created_at,
                **contact_values(contact),
            )
        )

    async def get(
        self,
        tenant: str,
        contact_id: uuid.UUID,
        *,
        for_update: bool = False,
        include_deleted: bool = False,
    ) -> Contact | None:
        statement = select(t.contacts).where(t.contacts.c.tenant_id == tenant, t.contacts.c.id == contact_id)
        if not include_deleted:
            statement = statement.where(t.contacts.c.deleted_at.is_(None))
        row = await self._first(statement.with_for_update() if for_update else statement)
        return _contact(row) if row else None

    async def update(self, contact: Contact) -> None:
        await self._conn.execute(
            update(t.contacts)
            .where(t.contacts.c.tenant_id == contact.tenant, t.contacts.c.id == contact.id)
            .values(**contact_values(contact))
        )

    async def upsert_many(
        self, contacts: Sequence[Contact], fields_present: Collection[str]
    ) -> list[Contact]:
        """Insert the contacts; one whose ``external_id`` exists already updates that contact instead
        (only the columns of ``fields_present``; version + 1, undeleted). The rows go in with COPY
        into a temporary table, then one INSERT ... SELECT ... ON CONFLICT moves them over.
        Returns what is stored (order not kept)."""
        if not contacts:
            return []
        columns = [c.name for c in t.contacts.c]
        await self._conn.execute(
            text("CREATE TEMPORARY TABLE import_contacts (LIKE contacts INCLUDING DEFAULTS) ON COMMIT DROP")
        )
        driver = await driver_connection(self._conn)
        await driver.copy_records_to_table(
            "import_contacts",
            columns=columns,
            records=[_copy_record(columns, c) for c in contacts],
        )
        staged = Table("import_contacts", MetaData(), *(Column(c.name, c.type) for c in t.contacts.c))
        statement = insert(t.contacts).from_select(columns, select(*(staged.c[name] for name in columns)))
        replaced = {column for f in fields_present for column in IMPORT_COLUMNS.get(f, ())}
        on_conflict = {column: statement.excluded[column] for column in sorted(replaced)} | {
            "version": t.contacts.c.version + 1,
            "updated_at": statement.excluded.updated_at,
            "deleted_at": None,
        }
        upsert = statement.on_conflict_do_update(
            constraint="uq_contacts_external_id", set_=on_conflict
        ).returning(*t.contacts.c)
        result = await self._conn.execute(upsert)
        stored = [_contact(row) for row in result.mappings().all()]
        await self._conn.execute(text("DROP TABLE import_contacts"))
        return stored

    async def external_id_taken(self, tenant: str, external_id: str, *, other_than: uuid.UUID | None) -> bool:
        c = t.contacts.c
        statement = select(c.id).where(c.tenant_id == tenant, c.external_id == external_id)
        if other_than is not None:
            statement = statement.where(c.id != other_than)
        return await self._first(statement) is not None

    async def list(
        self, tenant: str, *, limit: int, after: Cursor | None = None, filters: ContactFilter | None = None
    ) -> Sequence[Contact]:
        c = t.contacts.c
        conditions = contact_conditions(tenant, filters or ContactFilter())
        rows = await self._all(
            select(t.contacts)
            .where(*conditions, *_after(t.contacts, after))
            .order_by(c.created_at, c.id)
            .limit(limit)
        )
        return [_contact(row) for row in rows]


# --- workflows -----------------------------------------------------------------------------------


def _version(row: RowMapping) -> WorkflowVersion:
    return WorkflowVersion.from_specs(
        row["version"],
        VersionStatus(row["status"]),
        row["steps"],
        row["created_at"],
        row["published_at"],
        goals=row["goals"] or (),
    )


class SqlWorkflowRepository(_Repository):
    async def add(self, workflow: Workflow) -> None:
        await self._conn.execute(
            t.workflows.insert().values(
                tenant_id=workflow.tenant,
                id=workflow.id,
                name=workflow.name,
                created_at=workflow.created_at,
                updated_at=workflow.updated_at,
            )
        )
        for version in workflow.versions:
            await self._insert_version(workflow, version)

    async def _insert_version(self, workflow: Workflow, version: WorkflowVersion) -> None:
        await self._conn.execute(
            t.workflow_versions.insert().values(
                tenant_id=workflow.tenant,
                workflow_id=workflow.id,
                version=version.number,
                status=version.status.value,
                steps=version.step_specs,
                created_at=version.created_at,
                published_at=version.published_at,
                goals=list(version.goals),
            )
        )

    async def get(self, tenant: str, workflow_id: uuid.UUID, *, for_update: bool = False) -> Workflow | None:
        statement = select(t.workflows).where(
            t.workflows.c.tenant_id == tenant, t.workflows.c.id == workflow_id
        )
        row = await self._first(statement.with_for_update() if for_update else statement)
        if row is None:
            return None
        versions = await self._all(
            select(t.workflow_versions)
            .where(
                t.workflow_versions.c.tenant_id == tenant, t.workflow_versions.c.workflow_id == workflow_id
            )
            .order_by(t.workflow_versions.c.version)
        )
        return Workflow(
            id=row["id"],
            tenant=row["tenant_id"],
            name=row["name"],
            versions=[_version(v) for v in versions],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    async def save(self, workflow: Workflow) -> None:
        """Updates the name, rewrites the stored draft, inserts new versions. A published row is
        only ever touched to turn the draft it was into a published one."""
        await self._conn.execute(
            update(t.workflows)
            .where(t.workflows.c.tenant_id == workflow.tenant, t.workflows.c.id == workflow.id)
            .values(name=workflow.name, updated_at=workflow.updated_at)
        )
        stored = {
            row["version"]: row["status"]
            for row in await self._all(
                select(t.workflow_versions.c.version, t.workflow_versions.c.status).where(
                    t.workflow_versions.c.tenant_id == workflow.tenant,
                    t.workflow_versions.c.workflow_id == workflow.id,
                )
            )
        }
        v = t.workflow_versions.c
        for version in workflow.versions:
            status = stored.get(version.number)
            if status is None:
                await self._insert_version(workflow, version)
            elif status == VersionStatus.DRAFT.value:
                await self._conn.execute(
                    update(t.workflow_versions)
                    .where(
                        v.tenant_id == workflow.tenant,
                        v.workflow_id == workflow.id,
                        v.version == version.number,
                        v.status == VersionStatus.DRAFT.value,
                    )
                    .values(
                        status=version.status.value,
                        steps=version.step_specs,
                        published_at=version.published_at,
                        goals=list(version.goals),
                    )
                )

    async def list(self, tenant: str, *, limit: int, offset: int) -> Sequence[Workflow]:
        rows = await self._all(
            select(t.workflows.c.id)
            .where(t.workflows.c.tenant_id == tenant)
            .order_by(t.workflows.c.created_at, t.workflows.c.id)
            .limit(limit)
            .offset(offset)
        )
        found = [await self.get(tenant, row["id"]) for row in rows]
        return [w for w in found if w is not None]


# --- enrollments ---------------------------------------------------------------------------------


class SqlEnrollmentRepository(_Repository):
    def __init__(self, uow: SqlUnitOfWork) -> None:
        super().__init__(uow)
        # History entries already stored, per enrollment loaded or added in this unit of work.
        self._stored_history: dict[tuple[str, uuid.UUID], int] = {}

    async def add(self, enrollment: Enrollment) -> None:
        await self._conn.execute(
            t.enrollments.insert().values(
                tenant_id=enrollment.tenant,
                id=enrollment.id,
                contact_id=enrollment.contact_id,
                workflow_id=enrollment.workflow_id,
                created_at=enrollment.created_at,
                **self._state(enrollment),
            )
        )
        self._stored_history[(enrollment.tenant, enrollment.id)] = 0
        await self._append_history(enrollment)

    @staticmethod
    def _state(enrollment: Enrollment) -> dict[str, Any]:
        return {
            "workflow_version": enrollment.workflow_version,
            "status": enrollment.status.value,
            "current_step_id": enrollment.current_step_id,
            "waiting_action_id": enrollment.waiting_action_id,
            "updated_at": enrollment.updated_at,
            "timer_id": enrollment.timer_id,
            "last_outcome": enrollment.last_outcome,
        }

    async def _append_history(self, enrollment: Enrollment) -> None:
        key = (enrollment.tenant, enrollment.id)
        new = enrollment.history[self._stored_history[key] :]
        if new:
            await self._conn.execute(
                t.enrollment_history.insert(),
                [
                    {
                        "tenant_id": enrollment.tenant,
                        "enrollment_id": enrollment.id,
                        "step_id": h.step_id,
                        "at": h.at,
                        "event": h.event.value,
                        "detail": h.detail,
                    }
                    for h in new
                ],
            )
        self._stored_history[key] = len(enrollment.history)

    async def _load(self, row: RowMapping) -> Enrollment:
        h = t.enrollment_history.c
        history = await self._all(
            select(t.enrollment_history)
            .where(h.tenant_id == row["tenant_id"], h.enrollment_id == row["id"])
            .order_by(h.id)
        )
        enrollment = Enrollment(
            id=row["id"],
            tenant=row["tenant_id"],
            contact_id=row["contact_id"],
            workflow_id=row["workflow_id"],
            workflow_version=row["workflow_version"],
            status=EnrollmentStatus(row["status"]),
            current_step_id=row["current_step_id"],
            waiting_action_id=row["waiting_action_id"],
            history=[
                entry
                for e in history
                for entry in history_entries(e["step_id"], e["at"], e["event"], e["detail"])
            ],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            timer_id=row["timer_id"],
            last_outcome=row["last_outcome"],
        )
        self._stored_history[(enrollment.tenant, enrollment.id)] = len(enrollment.history)
        return enrollment

    async def get(
        self, tenant: str, enrollment_id: uuid.UUID, *, for_update: bool = False
    ) -> Enrollment | None:
        e = t.enrollments.c
        statement = select(t.enrollments).where(e.tenant_id == tenant, e.id == enrollment_id)
        row = await self._first(statement.with_for_update() if for_update else statement)
        return await self._load(row) if row else None

    async def save(self, enrollment: Enrollment) -> None:
        if (enrollment.tenant, enrollment.id) not in self._stored_history:
            raise RuntimeError("save() of an enrollment not loaded in this unit of work")
        e = t.enrollments.c
        await self._conn.execute(
            update(t.enrollments)
            .where(e.tenant_id == enrollment.tenant, e.id == enrollment.id)
            .values(**self._state(enrollment))
        )
        await self._append_history(enrollment)

    async def running_for(
        self, tenant: str, workflow_id: uuid.UUID, contact_id: uuid.UUID
    ) -> Enrollment | None:
        e = t.enrollments.c
        row = await self._first(
            select(t.enrollments).where(
                e.tenant_id == tenant,
                e.workflow_id == workflow_id,
                e.contact_id == contact_id,
                e.status.in_([EnrollmentStatus.ACTIVE.value, EnrollmentStatus.WAITING.value]),
            )
        )
        return await self._load(row) if row else None

    async def running_contact_ids(self, tenant: str, contact_ids: Collection[uuid.UUID]) -> set[uuid.UUID]:
        if not contact_ids:
            return set()
        e = t.enrollments.c
        rows = await self._all(
            select(e.contact_id)
            .distinct()
            .where(
                e.tenant_id == tenant,
                e.contact_id.in_(list(contact_ids)),
                e.status.in_([EnrollmentStatus.ACTIVE.value, EnrollmentStatus.WAITING.value]),
            )
        )
        return {row["contact_id"] for row in rows}

    async def list(
        self,
        tenant: str,
        *,
        workflow_id: uuid.UUID | None = None,
        contact_id: uuid.UUID | None = None,
        limit: int,
        offset: int,
    ) -> Sequence[Enrollment]:
        e = t.enrollments.c
        conditions = [e.tenant_id == tenant]
        if workflow_id is not None:
            conditions.append(e.workflow_id == workflow_id)
        if contact_id is not None:
            conditions.append(e.contact_id == contact_id)
        rows = await self._all(
            select(t.enrollments)
            .where(and_(*conditions))
            .order_by(e.created_at, e.id)
            .limit(limit)
            .offset(offset)
        )
        return [await self._load(row) for row in rows]


# --- manual actions ------------------------------------------------------------------------------

_ACTION_FIELDS = (
    "enrollment_id",
    "workflow_id",
    "workflow_version",
    "workflow_name",
    "step_id",
    "action_name",
    "contact_id",
    "contact_name",
    "contact_phone",
    "assignee_user_id",
    "message",
    "notes",
    "outcome",
    "created_at",
    "finished_at",
)


#: Key of a history row's detail that holds further entries of the same moment stored in that row
#: (bulk enrollment's lean path writes "enrolled" and "action_queued" as one row); reading unfolds
#: them, so an enrollment's history reads the same either way.
FOLDED_HISTORY = "_folded"


def history_entries(
    step_id: str | None, at: datetime, event: str, detail: Mapping[str, Any]
) -> list[HistoryEntry]:
    """The history entries of one ``enrollment_history`` row (one, or more when folded)."""
    own = dict(detail)
    folded = own.pop(FOLDED_HISTORY, None) or ()
    return [
        HistoryEntry(step_id=step_id, at=at, event=HistoryEvent(event), detail=own),
        *(
            HistoryEntry(
                step_id=f["step_id"], at=at, event=HistoryEvent(f["event"]), detail=dict(f["detail"])
            )
            for f in folded
        ),
    ]


class SqlActionRepository(_Repository):
    async def add(self, action: ManualAction) -> None:
        await self._conn.execute(
            t.manual_actions.insert().values(
                tenant_id=action.tenant,
                id=action.id,
                action_type=action.action_type.value,
                status=action.status.value,
                **{name: getattr(action, name) for name in _ACTION_FIELDS},
            )
        )

    async def get(
        self, tenant: str, action_id: uuid.UUID, *, for_update: bool = False
    ) -> ManualAction | None:
        a = t.manual_actions.c
        statement = select(t.manual_actions).where(a.tenant_id == tenant, a.id == action_id)
        row = await self._first(statement.with_for_update() if for_update else statement)
        if row is None:
            return None
        return ManualAction(
            id=row["id"],
            tenant=row["tenant_id"],
            action_type=ActionType(row["action_type"]),
            status=ActionStatus(row["status"]),
            **{name: row[name] for name in _ACTION_FIELDS},
        )

    async def save(self, action: ManualAction) -> None:
        a = t.manual_actions.c
        await self._conn.execute(
            update(t.manual_actions)
            .where(a.tenant_id == action.tenant, a.id == action.id)
            .values(status=action.status.value, outcome=action.outcome, finished_at=action.finished_at)
        )


# --- timers --------------------------------------------------------------------------------------


def _timer(row: RowMapping) -> Timer:
    return Timer(
        id=row["id"],
        tenant=row["tenant_id"],
        enrollment_id=row["enrollment_id"],
        kind=TimerKind(row["kind"]),
        step_id=row["step_id"],
        due_at=row["due_at"],
        created_at=row["created_at"],
        action_id=row["action_id"],
        fired_at=row["fired_at"],
    )


class SqlTimerRepository(_Repository):
    async def add_many(self, timers: Sequence[Timer]) -> None:
        if not timers:
            return
        await self._conn.execute(
            t.timers.insert(),
            [
                {
                    "tenant_id": timer.tenant,
                    "id": timer.id,
                    "enrollment_id": timer.enrollment_id,
                    "kind": timer.kind.value,
                    "step_id": timer.step_id,
                    "action_id": timer.action_id,
                    "due_at": timer.due_at,
                    "created_at": timer.created_at,
                }
                for timer in timers
            ],
        )

    async def claim_due(self, now: datetime, limit: int) -> list[Timer]:
        """Due, unfired timers of every tenant, oldest due first, locked FOR UPDATE SKIP LOCKED:
        concurrent loops (replicas) each get different rows and nobody waits."""
        c = t.timers.c
        rows = await self._all(
            select(t.timers)
            .where(c.fired_at.is_(None), c.due_at <= now)
            .order_by(c.due_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return [_timer(row) for row in rows]

    async def mark_fired(self, timers: Sequence[Timer], at: datetime) -> None:
        c = t.timers.c
        for tenant in {timer.tenant for timer in timers}:
            await self._conn.execute(
                update(t.timers)
                .where(c.tenant_id == tenant, c.id.in_([x.id for x in timers if x.tenant == tenant]))
                .values(fired_at=at)
            )

    async def pending_for(self, tenant: str, enrollment_id: uuid.UUID) -> list[Timer]:
        c = t.timers.c
        rows = await self._all(
            select(t.timers)
            .where(c.tenant_id == tenant, c.enrollment_id == enrollment_id, c.fired_at.is_(None))
            .order_by(c.due_at)
        )
        return [_timer(row) for row in rows]


# --- round robin ---------------------------------------------------------------------------------


class SqlRoundRobinRepository(_Repository):
    async def ensure(self, tenant: str, workflow_id: uuid.UUID, step_ids: Collection[str]) -> None:
        if not step_ids:
            return
        await self._conn.execute(
            insert(t.round_robin_positions)
            .values(
                [
                    {"tenant_id": tenant, "workflow_id": workflow_id, "step_id": s, "position": 0}
                    for s in step_ids
                ]
            )
            .on_conflict_do_nothing(index_elements=["tenant_id", "workflow_id", "step_id"])
        )

    async def load(
        self, tenant: str, workflow_id: uuid.UUID, *, for_update: bool = True
    ) -> dict[str, dict[str, int]]:
        r = t.round_robin_positions.c
        statement = select(r.step_id, r.scores).where(r.tenant_id == tenant, r.workflow_id == workflow_id)
        rows = await self._all(statement.order_by(r.step_id).with_for_update() if for_update else statement)
        return {row["step_id"]: dict(row["scores"]) for row in rows}

    async def save(
        self, tenant: str, workflow_id: uuid.UUID, scores: Mapping[str, Mapping[str, int]]
    ) -> None:
        if not scores:
            return
        statement = insert(t.round_robin_positions)
        await self._conn.execute(
            statement.values(
                [
                    {"tenant_id": tenant, "workflow_id": workflow_id, "step_id": step, "scores": dict(values)}
                    for step, values in scores.items()
                ]
            ).on_conflict_do_update(
                index_elements=["tenant_id", "workflow_id", "step_id"],
                set_={"scores": statement.excluded.scores},
            )
        )


# --- unit of work --------------------------------------------------------------------------------


class SqlUnitOfWork:
    """One connection and transaction per ``async with`` block; rolled back unless committed.

    The same object may be used for several blocks one after another (never nested or concurrently).
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._connection: AsyncConnection | None = None
        self._transaction: AsyncTransaction | None = None
        self.teams: TeamRepository = SqlTeamRepository(self)
        self.users: UserRepository = SqlUserRepository(self)
        self.contacts: ContactRepository = SqlContactRepository(self)
        self.workflows: WorkflowRepository = SqlWorkflowRepository(self)
        self.enrollments: EnrollmentRepository = SqlEnrollmentRepository(self)
        self.actions: ActionRepository = SqlActionRepository(self)
        self.round_robin: RoundRobinRepository = SqlRoundRobinRepository(self)
        self.timers: TimerRepository = SqlTimerRepository(self)

    @property
    def connection(self) -> AsyncConnection:
        if self._connection is None:
            raise RuntimeError("unit of work used outside 'async with'")
        return self._connection

    async def __aenter__(self) -> Self:
        if self._connection is not None:
            raise RuntimeError("unit of work is already in use")
        self.enrollments = SqlEnrollmentRepository(self)  # forget history bookkeeping of earlier blocks
        self._connection = await self._engine.connect()
        self._transaction = await self._connection.begin()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._transaction is not None and self._transaction.is_active:
                await self._transaction.rollback()
        finally:
            if self._connection is not None:
                await self._connection.close()
            self._connection = None
            self._transaction = None

    async def commit(self) -> None:
        if self._transaction is None:
            raise RuntimeError("unit of work used outside 'async with'")
        await self._transaction.commit()

    async def rollback(self) -> None:
        if self._transaction is not None and self._transaction.is_active:
            await self._transaction.rollback()

    async def publish(self, topic: str, envelope: Envelope[Any]) -> None:
        await outbox_plumbing.add_to_outbox(self.connection, topic, envelope)

    async def publish_documents(self, topic: str, documents: Sequence[dict[str, Any]]) -> None:
        """Like ``publish`` for many envelopes given as JSON documents: the same outbox rows as
        ``add_to_outbox`` writes (key = subject; type, version and tenant headers), written with
        COPY, and one notification for the relay."""
        await copy_documents_to_outbox(self.connection, topic, documents)

    async def first_time_seen(self, consumer: str, message_id: uuid.UUID) -> bool:
        return await outbox_plumbing.first_time_seen(self.connection, consumer, message_id)


class SqlUnitOfWorkFactory:
    """A new ``SqlUnitOfWork`` per call (one per request or consumed batch), on one shared engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    def __call__(self) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.engine)
