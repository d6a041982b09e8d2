"""Users (the tenant's team members) and contacts (the people a workflow reaches out to)."""

from __future__ import annotations

import re
import uuid
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from workflow_runner.domain.directory import (
    Availability,
    Channel,
    ChannelFlags,
    WorkingHours,
    validate_external_id,
    validate_tags,
)
from workflow_runner.domain.errors import InvalidField, InvalidFields, Problem
from workflow_runner.domain.phone import normalise_phone

CustomValue = str | int | float | bool | None

CUSTOM_FIELD_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_NAME_LENGTH = 200
MAX_CUSTOM_FIELDS = 100
MAX_CUSTOM_TEXT = 2000


class UserRole(StrEnum):
    """What a user may do; the same names as the roles carried by API tokens."""

    ADMIN = "admin"
    MANAGER = "manager"
    AGENT = "agent"


def _clean_name(value: str, field_name: str) -> str:
    cleaned = " ".join(value.split())
    if not cleaned:
        raise InvalidField(field_name, "must not be empty")
    if len(cleaned) > MAX_NAME_LENGTH:
        raise InvalidField(field_name, f"is longer than {MAX_NAME_LENGTH} characters")
    return cleaned


def split_name(name: str) -> tuple[str, str]:
    """First and last name derived from a full name: the first word, and the rest ("" if none)."""
    first, _, rest = " ".join(name.split()).partition(" ")
    return first, rest


@dataclass(frozen=True)
class User:
    """A team member who can be assigned manual actions. ``phone`` is E.164 (the agent's phone
    that the dialer rings first). ``timezone`` is the zone ``working_hours`` are read in.

    ``version`` counts changes (1 at creation); it is the ``sequence`` of UserUpdated events.
    ``deleted_at`` marks a deleted user: kept for history, never assigned work again.
    """

    id: uuid.UUID
    tenant: str
    name: str
    phone: str
    role: UserRole
    created_at: datetime
    team_id: uuid.UUID | None = None
    timezone: str = "UTC"
    availability: Availability = field(default_factory=Availability)
    working_hours: WorkingHours | None = None
    updated_at: datetime | None = None
    version: int = 1
    deleted_at: datetime | None = None

    @classmethod
    def create(
        cls,
        *,
        tenant: str,
        name: str,
        phone: str,
        role: UserRole | str,
        now: datetime,
        user_id: uuid.UUID | None = None,
        team_id: uuid.UUID | None = None,
        timezone: str | None = None,
        availability: Availability | Mapping[str, Any] | None = None,
        working_hours: WorkingHours | Mapping[str, Any] | None = None,
    ) -> User:
        """Validate and normalise; raises InvalidField naming the offending field (InvalidFields
        when several are wrong)."""
        check = _Checks()
        parsed_role = check("role", lambda: _role(role))
        clean_name = check("name", lambda: _clean_name(name, "name"))
        clean_phone = check("phone", lambda: normalise_phone(phone, field="phone"))
        zone = check("timezone", lambda: validate_timezone(timezone) if timezone else "UTC")
        parsed_availability = check(
            "availability", lambda: Availability.parse(availability) if availability else Availability()
        )
        hours = check("working_hours", lambda: WorkingHours.parse(working_hours))
        check.raise_if_any()
        return cls(
            id=user_id or uuid.uuid4(),
            tenant=tenant,
            name=clean_name,
            phone=clean_phone,
            role=parsed_role,
            created_at=now,
            team_id=team_id,
            timezone=zone,
            availability=parsed_availability,
            working_hours=hours,
            updated_at=now,
        )

    def changed(self, changes: Mapping[str, Any], now: datetime) -> User:
        """A copy with the fields in ``changes`` replaced and validated, version + 1. Keys:
        name, phone, role, team_id, timezone, availability, working_hours (null: no limit)."""
        unknown = set(changes) - USER_FIELDS
        if unknown:
            raise InvalidField(sorted(unknown)[0], "cannot be changed")
        merged = User.create(
            tenant=self.tenant,
            now=now,
            user_id=self.id,
            name=changes.get("name", self.name),
            phone=changes.get("phone", self.phone),
            role=changes.get("role", self.role),
            team_id=changes.get("team_id", self.team_id),
            timezone=changes.get("timezone", self.timezone),
            availability=changes.get("availability", self.availability),
            working_hours=changes.get("working_hours", self.working_hours),
        )
        return replace(merged, created_at=self.created_at, version=self.version + 1)

    def deleted(self, now: datetime) -> User:
        return replace(self, deleted_at=now, updated_at=now, version=self.version + 1)

    def can_take_work(self, at: datetime, *, respect_working_hours: bool) -> bool:
        """Not deleted, not away or out of office at ``at`` and, when asked, inside working hours."""
        if self.deleted_at is not None or self.availability.is_unavailable_at(at):
            return False
        if respect_working_hours and self.working_hours is not None:
            return self.working_hours.contains(at, self.timezone)
        return True

    @property
    def first_name(self) -> str:
        return split_name(self.name)[0]


USER_FIELDS = frozenset({"name", "phone", "role", "team_id", "timezone", "availability", "working_hours"})


def _role(value: UserRole | str) -> UserRole:
    try:
        return UserRole(value)
    except ValueError as exc:
        raise InvalidField("role", f"must be one of {', '.join(r.value for r in UserRole)}") from exc


R = TypeVar("R")


class _Checks:
    """Runs field validators, keeping every InvalidField so one response can name them all."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def __call__(self, name: str, check: Callable[[], R]) -> R:
        try:
            return check()
        except InvalidFields as exc:
            self.problems.extend(exc.problems)
        except InvalidField as exc:
            self.problems.append(Problem(exc.field, exc.message))
        return None  # type: ignore[return-value]  # unused: raise_if_any() raises first

    def raise_if_any(self) -> None:
        if len(self.problems) == 1:
            raise InvalidField(self.problems[0].field, self.problems[0].message)
        if self.problems:
            raise InvalidFields(self.problems)


def validate_timezone(value: str, *, field_name: str = "timezone") -> str:
    """An IANA time zone name such as ``America/New_York``."""
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidField(field_name, f"unknown time zone {value!r} (expected an IANA name)") from exc
    return value


EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")


def validate_email(value: str, *, field_name: str = "email") -> str:
    """A plausible address (one @, a dot in the domain). Deliverability is not our concern here."""
    cleaned = value.strip()
    if len(cleaned) > 254 or not EMAIL.match(cleaned):
        raise InvalidField(field_name, "is not an email address")
    return cleaned


def validate_custom_fields(values: Mapping[str, CustomValue]) -> dict[str, CustomValue]:
    """Keys usable in ``{{contact.custom.<key>}}``; values are scalars."""
    if len(values) > MAX_CUSTOM_FIELDS:
        raise InvalidField("custom_fields", f"at most {MAX_CUSTOM_FIELDS} fields")
    cleaned: dict[str, CustomValue] = {}
    for key, value in values.items():
        if not CUSTOM_FIELD_KEY.match(key):
            raise InvalidField(f"custom_fields.{key}", "use letters, digits and _; no leading digit")
        if isinstance(value, str) and len(value) > MAX_CUSTOM_TEXT:
            raise InvalidField(f"custom_fields.{key}", f"is longer than {MAX_CUSTOM_TEXT} characters")
        if value is not None and not isinstance(value, str | int | float | bool):
            raise InvalidField(f"custom_fields.{key}", "must be a string, number, boolean or null")
        cleaned[key] = value
    return cleaned


@dataclass
class Contact:
    """Someone a workflow reaches out to. ``phone`` is E.164 or None (no usable number).

    ``first_name``/``last_name`` are derived from ``name`` unless given explicitly.
    ``owner_user_id`` is the user the contact is assigned to (set by Assign User steps).
    ``opted_out`` (the contact's wish) and ``do_not_disturb`` (a person's pause) are per channel.
    ``external_id`` is the id in the system the contact was imported from (unique per tenant).
    ``version`` counts changes (1 at creation) and is the ``sequence`` of ContactUpdated events.
    """

    id: uuid.UUID
    tenant: str
    name: str
    first_name: str
    last_name: str
    phone: str | None
    email: str | None
    timezone: str | None
    custom_fields: dict[str, CustomValue] = field(default_factory=dict)
    owner_user_id: uuid.UUID | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    tags: list[str] = field(default_factory=list)
    opted_out: ChannelFlags = field(default_factory=ChannelFlags)
    do_not_disturb: ChannelFlags = field(default_factory=ChannelFlags)
    external_id: str | None = None
    version: int = 1
    deleted_at: datetime | None = None

    @classmethod
    def create(
        cls,
        *,
        tenant: str,
        now: datetime,
        name: str | None = None,
        first_name: str | None = None,
        last_name: str | None = None,
        phone: str | None = None,
        email: str | None = None,
        timezone: str | None = None,
        custom_fields: Mapping[str, CustomValue] | None = None,
        owner_user_id: uuid.UUID | None = None,
        contact_id: uuid.UUID | None = None,
        tags: Sequence[str] | None = None,
        opted_out: ChannelFlags | Mapping[str, Any] | None = None,
        do_not_disturb: ChannelFlags | Mapping[str, Any] | None = None,
        external_id: str | None = None,
    ) -> Contact:
        """Validate and normalise. ``name`` or ``first_name`` is required; whichever is missing is
        derived from the other. Raises InvalidField naming the offending field, or InvalidFields
        naming every offending field."""
        check = _Checks()
        names = check("name", lambda: _names(name, first_name, last_name))
        clean_phone = check(
            "phone", lambda: normalise_phone(phone, field="phone") if phone is not None else None
        )
        clean_email = check("email", lambda: validate_email(email) if email else None)
        zone = check("timezone", lambda: validate_timezone(timezone) if timezone else None)
        custom = check("custom_fields", lambda: validate_custom_fields(custom_fields or {}))
        clean_tags = check("tags", lambda: validate_tags(list(tags or [])))
        opt = check("opted_out", lambda: ChannelFlags.parse(opted_out, field_name="opted_out"))
        dnd = check("do_not_disturb", lambda: ChannelFlags.parse(do_not_disturb, field_name="do_not_disturb"))
        ext = check("external_id", lambda: validate_external_id(external_id))
        check.raise_if_any()
        full, first, last = names
        return cls(
            id=contact_id or uuid.uuid4(),
            tenant=tenant,
            name=full,
            first_name=first,
            last_name=last,
            phone=clean_phone,
            email=clean_email,
            timezone=zone,
            custom_fields=custom,
            owner_user_id=owner_user_id,
            created_at=now,
            updated_at=now,
            tags=clean_tags,
            opted_out=opt,
            do_not_disturb=dnd,
            external_id=ext,
        )

    def changed(self, changes: Mapping[str, Any], now: datetime) -> Contact:
        """A copy with the fields in ``changes`` replaced and validated, version + 1.

        Changing ``name`` alone re-derives first and last name; ``opted_out`` and
        ``do_not_disturb`` change only the channels given; ``custom_fields`` and ``tags`` are
        replaced whole.
        """
        unknown = set(changes) - CONTACT_FIELDS
        if unknown:
            raise InvalidField(sorted(unknown)[0], "cannot be changed")
        if "name" in changes:
            name, first, last = changes["name"], changes.get("first_name"), changes.get("last_name")
        elif "first_name" in changes or "last_name" in changes:
            name = None
            first = changes.get("first_name", self.first_name)
            last = changes.get("last_name", self.last_name)
        else:
            name, first, last = self.name, self.first_name, self.last_name
        check = _Checks()
        opted = check(
            "opted_out",
            lambda: ChannelFlags.parse(changes.get("opted_out"), field_name="opted_out", base=self.opted_out),
        )
        dnd = check(
            "do_not_disturb",
            lambda: ChannelFlags.parse(
                changes.get("do_not_disturb"), field_name="do_not_disturb", base=self.do_not_disturb
            ),
        )
        check.raise_if_any()
        merged = Contact.create(
            tenant=self.tenant,
            now=now,
            contact_id=self.id,
            name=name,
            first_name=first,
            last_name=last,
            phone=changes.get("phone", self.phone),
            email=changes.get("email", self.email),
            timezone=changes.get("timezone", self.timezone),
            custom_fields=changes.get("custom_fields", self.custom_fields),
            owner_user_id=changes.get("owner_user_id", self.owner_user_id),
            tags=changes.get("tags", self.tags),
            opted_out=opted,
            do_not_disturb=dnd,
            external_id=changes.get("external_id", self.external_id),
        )
        merged.created_at = self.created_at
        merged.version = self.version + 1
        return merged

    def delete(self, now: datetime) -> None:
        self.deleted_at = now
        self.updated_at = now
        self.version += 1

    def assign_to(self, user_id: uuid.UUID, now: datetime) -> None:
        self.owner_user_id = user_id
        self.updated_at = now
        self.version += 1

    def reachable_by(self, channel: Channel) -> bool:
        """False when the contact opted out of ``channel`` or it is paused (do not disturb)."""
        return not (self.opted_out.get(channel) or self.do_not_disturb.get(channel))


CONTACT_FIELDS = frozenset(
    {
        "name",
        "first_name",
        "last_name",
        "phone",
        "email",
        "timezone",
        "custom_fields",
        "owner_user_id",
        "tags",
        "opted_out",
        "do_not_disturb",
        "external_id",
    }
)


def _names(name: str | None, first_name: str | None, last_name: str | None) -> tuple[str, str, str]:
    if name is None or not name.strip():
        if not first_name or not first_name.strip():
            raise InvalidField("name", "name (or first_name) is required")
        name = f"{first_name} {last_name or ''}"
    full = _clean_name(name, "name")
    derived_first, derived_last = split_name(full)
    first = _clean_name(first_name, "first_name") if first_name and first_name.strip() else derived_first
    last = " ".join(last_name.split()) if last_name is not None else derived_last
    return full, first, last
