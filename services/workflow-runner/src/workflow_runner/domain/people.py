"""Users (the tenant's team members) and contacts (the people a workflow reaches out to)."""

from __future__ import annotations

import re
import uuid
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from workflow_runner.domain.errors import InvalidField
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
    that the dialer rings first)."""

    id: uuid.UUID
    tenant: str
    name: str
    phone: str
    role: UserRole
    created_at: datetime

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
    ) -> User:
        """Validate and normalise; raises InvalidField naming ``name``, ``phone`` or ``role``."""
        try:
            parsed_role = UserRole(role)
        except ValueError as exc:
            raise InvalidField("role", f"must be one of {', '.join(r.value for r in UserRole)}") from exc
        return cls(
            id=user_id or uuid.uuid4(),
            tenant=tenant,
            name=_clean_name(name, "name"),
            phone=normalise_phone(phone, field="phone"),
            role=parsed_role,
            created_at=now,
        )

    @property
    def first_name(self) -> str:
        return split_name(self.name)[0]


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
    ) -> Contact:
        """Validate and normalise. ``name`` or ``first_name`` is required; whichever is missing is
        derived from the other. Raises InvalidField naming the offending field."""
        if name is None or not name.strip():
            if not first_name or not first_name.strip():
                raise InvalidField("name", "name (or first_name) is required")
            name = f"{first_name} {last_name or ''}"
        full = _clean_name(name, "name")
        derived_first, derived_last = split_name(full)
        first = _clean_name(first_name, "first_name") if first_name and first_name.strip() else derived_first
        last = " ".join(last_name.split()) if last_name is not None else derived_last
        return cls(
            id=contact_id or uuid.uuid4(),
            tenant=tenant,
            name=full,
            first_name=first,
            last_name=last,
            phone=normalise_phone(phone, field="phone") if phone is not None else None,
            email=validate_email(email) if email else None,
            timezone=validate_timezone(timezone) if timezone else None,
            custom_fields=validate_custom_fields(custom_fields or {}),
            owner_user_id=owner_user_id,
            created_at=now,
            updated_at=now,
        )

    def assign_to(self, user_id: uuid.UUID, now: datetime) -> None:
        self.owner_user_id = user_id
        self.updated_at = now
