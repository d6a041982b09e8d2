"""Use cases of the directory: teams, users and contacts. Every change of a user or contact
stages its UserUpdated / ContactUpdated event (the entity's full current state, ``sequence`` =
its version) in the same transaction, so other services' copies never miss a change."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import TypeAdapter

from manual_actions.contracts import Envelope, topics
from manual_actions.contracts.messages import (
    Availability as AvailabilityPayload,
)
from manual_actions.contracts.messages import (
    ChannelFlags as ChannelFlagsPayload,
)
from manual_actions.contracts.messages import (
    ContactUpdated,
    UserUpdated,
    WorkingInterval,
)
from workflow_runner.domain.directory import ChannelFlags, Team
from workflow_runner.domain.errors import Conflict, InvalidField, NotFound
from workflow_runner.domain.imports import ParsedImport, RowError, reject_unknown_owners, validate_rows
from workflow_runner.domain.people import Contact, User
from workflow_runner.handlers import goals as goal_rules
from workflow_runner.handlers.commands import CreateContact, CreateUser
from workflow_runner.handlers.ports import ContactFilter, Cursor, UnitOfWork

SOURCE = "workflow-runner"

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


# --- events ----------------------------------------------------------------------------------


def _flags(flags: ChannelFlags) -> ChannelFlagsPayload:
    return ChannelFlagsPayload(sms=flags.sms, call=flags.call)


def contact_updated(contact: Contact, *, causation_id: uuid.UUID | None = None) -> Envelope[ContactUpdated]:
    """The contact's current state; subject = contact id, sequence = its version."""
    assert contact.updated_at is not None
    payload = ContactUpdated(
        contact_id=contact.id,
        name=contact.name,
        phone=contact.phone,
        email=contact.email,
        timezone=contact.timezone,
        custom_fields=dict(contact.custom_fields),
        opted_out=_flags(contact.opted_out),
        do_not_disturb=_flags(contact.do_not_disturb),
        tags=list(contact.tags),
        owner_user_id=contact.owner_user_id,
        deleted=contact.deleted_at is not None,
        updated_at=contact.updated_at,
    )
    return Envelope.wrap(
        payload,
        source=SOURCE,
        tenant=contact.tenant,
        subject=str(contact.id),
        sequence=contact.version,
        causation_id=causation_id,
        time=contact.updated_at,
    )


def contact_updated_documents(contacts: Sequence[Contact]) -> list[dict[str, Any]]:
    """The ContactUpdated envelopes of many contacts as JSON documents, built without pydantic
    (bulk imports publish up to 100,000). Must equal ``contact_updated(c).to_jsonable()`` apart
    from the message id; a unit test holds the two together."""
    formatted: dict[datetime, str] = {}

    def when(value: datetime) -> str:
        if value not in formatted:
            formatted[value] = _DATETIME.dump_python(value, mode="json")
        return formatted[value]

    documents = []
    for c in contacts:
        assert c.updated_at is not None
        at = when(c.updated_at)
        documents.append(
            {
                "id": str(uuid.uuid4()),
                "type": ContactUpdated.message_type,
                "version": ContactUpdated.message_version,
                "source": SOURCE,
                "time": at,
                "tenant": c.tenant,
                "subject": str(c.id),
                "sequence": c.version,
                "causation_id": None,
                "data": {
                    "contact_id": str(c.id),
                    "name": c.name,
                    "phone": c.phone,
                    "email": c.email,
                    "timezone": c.timezone,
                    "custom_fields": dict(c.custom_fields),
                    "opted_out": {"sms": c.opted_out.sms, "call": c.opted_out.call},
                    "do_not_disturb": {"sms": c.do_not_disturb.sms, "call": c.do_not_disturb.call},
                    "tags": list(c.tags),
                    "owner_user_id": str(c.owner_user_id) if c.owner_user_id is not None else None,
                    "deleted": c.deleted_at is not None,
                    "updated_at": at,
                },
            }
        )
    return documents


_DATETIME: TypeAdapter[datetime] = TypeAdapter(datetime)


def user_updated(user: User) -> Envelope[UserUpdated]:
    """The user's current state; subject = user id, sequence = its version."""
    updated_at = user.updated_at or user.created_at
    hours = user.working_hours.as_dict() if user.working_hours is not None else None
    payload = UserUpdated(
        user_id=user.id,
        name=user.name,
        phone=user.phone,
        role=user.role.value,
        team_id=user.team_id,
        timezone=user.timezone,
        availability=AvailabilityPayload(
            status=user.availability.status.value,
            unavailable_from=user.availability.unavailable_from,
            unavailable_until=user.availability.unavailable_until,
        ),
        working_hours={
            day: [WorkingInterval(start=i["start"], end=i["end"]) for i in intervals]
            for day, intervals in hours.items()
        }
        if hours is not None
        else None,
        deleted=user.deleted_at is not None,
        updated_at=updated_at,
    )
    return Envelope.wrap(
        payload,
        source=SOURCE,
        tenant=user.tenant,
        subject=str(user.id),
        sequence=user.version,
        time=updated_at,
    )


# --- teams -----------------------------------------------------------------------------------


async def create_team(
    uow: UnitOfWork, tenant: str, name: str, description: str | None, *, clock: Clock = utcnow
) -> Team:
    async with uow:
        team = Team.create(tenant=tenant, name=name, description=description, now=clock())
        if await uow.teams.get_by_name(tenant, team.name) is not None:
            raise Conflict(f"a team named {team.name!r} already exists", field="name")
        await uow.teams.add(team)
        await uow.commit()
    return team


async def get_team(uow: UnitOfWork, tenant: str, team_id: uuid.UUID) -> Team:
    async with uow:
        team = await uow.teams.get(tenant, team_id)
    if team is None:
        raise NotFound("team", team_id)
    return team


async def list_teams(
    uow: UnitOfWork, tenant: str, *, limit: int, after: Cursor | None = None
) -> Sequence[Team]:
    async with uow:
        return await uow.teams.list(tenant, limit=limit, after=after)


async def update_team(
    uow: UnitOfWork, tenant: str, team_id: uuid.UUID, changes: Mapping[str, Any], *, clock: Clock = utcnow
) -> Team:
    async with uow:
        team = await uow.teams.get(tenant, team_id, for_update=True)
        if team is None:
            raise NotFound("team", team_id)
        changed = team.changed(changes, clock())
        same_name = await uow.teams.get_by_name(tenant, changed.name)
        if same_name is not None and same_name.id != team.id:
            raise Conflict(f"a team named {changed.name!r} already exists", field="name")
        await uow.teams.update(changed)
        await uow.commit()
    return changed


async def delete_team(uow: UnitOfWork, tenant: str, team_id: uuid.UUID) -> None:
    """Refused (Conflict) while users are in the team: move them first."""
    async with uow:
        team = await uow.teams.get(tenant, team_id, for_update=True)
        if team is None:
            raise NotFound("team", team_id)
        members = await uow.teams.count_members(tenant, team_id)
        if members:
            raise Conflict(f"team {team_id} still has {members} user(s); move them to another team first")
        await uow.teams.delete(tenant, team_id)
        await uow.commit()


# --- users -----------------------------------------------------------------------------------


async def _check_team(uow: UnitOfWork, tenant: str, team_id: uuid.UUID | None) -> None:
    if team_id is not None and await uow.teams.get(tenant, team_id) is None:
        raise InvalidField("team_id", f"team {team_id} does not exist")


async def create_user(uow: UnitOfWork, cmd: CreateUser, *, clock: Clock = utcnow) -> User:
    async with uow:
        user = User.create(
            tenant=cmd.tenant,
            name=cmd.name,
            phone=cmd.phone,
            role=cmd.role,
            now=clock(),
            team_id=cmd.team_id,
            timezone=cmd.timezone,
            availability=cmd.availability,
            working_hours=cmd.working_hours,
        )
        await _check_team(uow, cmd.tenant, user.team_id)
        await uow.users.add(user)
        await uow.publish(topics.USERS, user_updated(user))
        await uow.commit()
    return user


async def get_user(uow: UnitOfWork, tenant: str, user_id: uuid.UUID) -> User:
    async with uow:
        user = await uow.users.get(tenant, user_id)
    if user is None:
        raise NotFound("user", user_id)
    return user


async def list_users(
    uow: UnitOfWork,
    tenant: str,
    *,
    limit: int = 100,
    after: Cursor | None = None,
    role: str | None = None,
    team_id: uuid.UUID | None = None,
    availability: str | None = None,
) -> Sequence[User]:
    async with uow:
        return await uow.users.list(
            tenant, limit=limit, after=after, role=role, team_id=team_id, availability=availability
        )


async def update_user(
    uow: UnitOfWork, tenant: str, user_id: uuid.UUID, changes: Mapping[str, Any], *, clock: Clock = utcnow
) -> User:
    async with uow:
        user = await uow.users.get(tenant, user_id, for_update=True)
        if user is None:
            raise NotFound("user", user_id)
        changed = user.changed(changes, clock())
        if "team_id" in changes:
            await _check_team(uow, tenant, changed.team_id)
        await uow.users.update(changed)
        await uow.publish(topics.USERS, user_updated(changed))
        await uow.commit()
    return changed


async def delete_user(uow: UnitOfWork, tenant: str, user_id: uuid.UUID, *, clock: Clock = utcnow) -> None:
    """Marks the user deleted: no new work, gone from listings; actions and history still name it."""
    async with uow:
        user = await uow.users.get(tenant, user_id, for_update=True)
        if user is None:
            raise NotFound("user", user_id)
        gone = user.deleted(clock())
        await uow.users.update(gone)
        await uow.publish(topics.USERS, user_updated(gone))
        await uow.commit()


# --- contacts --------------------------------------------------------------------------------


async def _check_owner(uow: UnitOfWork, tenant: str, owner_user_id: uuid.UUID | None) -> None:
    if owner_user_id is not None and await uow.users.get(tenant, owner_user_id) is None:
        raise InvalidField("owner_user_id", f"user {owner_user_id} does not exist")


async def create_contact(uow: UnitOfWork, cmd: CreateContact, *, clock: Clock = utcnow) -> Contact:
    """Raises InvalidField (``owner_user_id`` when that user does not exist in the tenant) or
    Conflict (``external_id`` already used by another contact)."""
    async with uow:
        contact = Contact.create(
            tenant=cmd.tenant,
            now=clock(),
            name=cmd.name,
            first_name=cmd.first_name,
            last_name=cmd.last_name,
            phone=cmd.phone,
            email=cmd.email,
            timezone=cmd.timezone,
            custom_fields=cmd.custom_fields,
            owner_user_id=cmd.owner_user_id,
            tags=cmd.tags,
            opted_out=cmd.opted_out,
            do_not_disturb=cmd.do_not_disturb,
            external_id=cmd.external_id,
        )
        await _check_owner(uow, cmd.tenant, contact.owner_user_id)
        if contact.external_id is not None and await uow.contacts.external_id_taken(
            cmd.tenant, contact.external_id, other_than=None
        ):
            raise Conflict(
                f"external_id {contact.external_id!r} is used by another contact", field="external_id"
            )
        await uow.contacts.add(contact)
        await uow.publish(topics.CONTACTS, contact_updated(contact))
        await uow.commit()
    return contact


async def get_contact(uow: UnitOfWork, tenant: str, contact_id: uuid.UUID) -> Contact:
    async with uow:
        contact = await uow.contacts.get(tenant, contact_id)
    if contact is None:
        raise NotFound("contact", contact_id)
    return contact


async def list_contacts(
    uow: UnitOfWork,
    tenant: str,
    *,
    limit: int = 100,
    after: Cursor | None = None,
    filters: ContactFilter | None = None,
) -> Sequence[Contact]:
    async with uow:
        return await uow.contacts.list(tenant, limit=limit, after=after, filters=filters)


async def update_contact(
    uow: UnitOfWork, tenant: str, contact_id: uuid.UUID, changes: Mapping[str, Any], *, clock: Clock = utcnow
) -> Contact:
    async with uow:
        contact = await uow.contacts.get(tenant, contact_id, for_update=True)
        if contact is None:
            raise NotFound("contact", contact_id)
        changed = contact.changed(changes, clock())
        if "owner_user_id" in changes:
            await _check_owner(uow, tenant, changed.owner_user_id)
        if changed.external_id is not None and await uow.contacts.external_id_taken(
            tenant, changed.external_id, other_than=contact.id
        ):
            raise Conflict(
                f"external_id {changed.external_id!r} is used by another contact", field="external_id"
            )
        await uow.contacts.update(changed)
        await uow.publish(topics.CONTACTS, contact_updated(changed))
        # A newly set opt-out or do-not-disturb reaches that goal of the contact's enrollments.
        reached = goal_rules.goals_reached(contact, changed)
        if reached:
            await goal_rules.stop_for_goals(
                uow,
                tenant,
                contact.id,
                sorted(reached),
                changed.updated_at or clock(),
                reason="the contact was opted out or paused in the directory",
            )
        await uow.commit()
    return changed


async def delete_contact(
    uow: UnitOfWork, tenant: str, contact_id: uuid.UUID, *, clock: Clock = utcnow
) -> None:
    """Marks the contact deleted (gone from the API; running enrollments keep their history)."""
    async with uow:
        contact = await uow.contacts.get(tenant, contact_id, for_update=True)
        if contact is None:
            raise NotFound("contact", contact_id)
        contact.delete(clock())
        await uow.contacts.update(contact)
        await uow.publish(topics.CONTACTS, contact_updated(contact))
        await uow.commit()


# --- bulk import -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportResult:
    imported: int
    inserted: int
    updated: int
    failed: int
    errors: Sequence[RowError]


Validator = Callable[[str, Sequence[Any], set[str], datetime], Awaitable[ParsedImport]]


async def validate_here(tenant: str, rows: Sequence[Any], fields: set[str], now: datetime) -> ParsedImport:
    return validate_rows(tenant, rows, fields, now=now)


async def import_contacts(
    uow: UnitOfWork,
    tenant: str,
    rows: Sequence[Any],
    fields_present: Iterable[str],
    *,
    clock: Clock = utcnow,
    validate: Validator = validate_here,
) -> ImportResult:
    """Validate every row, then store the valid ones and their ContactUpdated events in one
    transaction (all valid rows or none). A row whose ``external_id`` exists updates that contact,
    so running the same import twice changes nothing but versions."""
    now = clock()
    started = time.perf_counter()
    parsed = await validate(tenant, rows, set(fields_present), now)
    validated = time.perf_counter()
    async with uow:
        owners = {c.owner_user_id for _, c in parsed.contacts if c.owner_user_id is not None}
        reject_unknown_owners(parsed, (await uow.users.get_many(tenant, owners)).keys())
        stored = await uow.contacts.upsert_many([c for _, c in parsed.contacts], parsed.fields_present)
        upserted = time.perf_counter()
        await uow.publish_documents(topics.CONTACTS, contact_updated_documents(stored))
        # Updated contacts now opted out or paused reach those goals of their running enrollments.
        await goal_rules.stop_for_imported(uow, tenant, stored, now)
        await uow.commit()
    log.info(
        "contacts imported",
        extra={
            "tenant": tenant,
            "rows": len(rows),
            "stored": len(stored),
            "failed": parsed.failed_rows,
            "validate_s": round(validated - started, 3),
            "upsert_s": round(upserted - validated, 3),
            "events_s": round(time.perf_counter() - upserted, 3),
        },
    )
    inserted = sum(1 for c in stored if c.version == 1)
    return ImportResult(
        imported=len(stored),
        inserted=inserted,
        updated=len(stored) - inserted,
        failed=parsed.failed_rows,
        errors=parsed.errors,
    )
