"""Directory rules beyond names and phones: teams, per-channel contact flags, tags, user
availability and working hours.

Availability and working hours decide whether a user may receive new work (Assign User skips
users who may not); they never change work already assigned.
"""

from __future__ import annotations

import itertools
import re
import uuid
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from workflow_runner.domain.errors import InvalidField

MAX_TAGS = 50
MAX_TAG_LENGTH = 64
TAG = re.compile(r"^[^\s,][^,]{0,63}$")
MAX_TEAM_NAME = 200
MAX_DESCRIPTION = 2000
MAX_EXTERNAL_ID = 200
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_INTERVALS_PER_DAY = 6
HHMM = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


class Channel(StrEnum):
    SMS = "sms"
    CALL = "call"


@dataclass(frozen=True)
class ChannelFlags:
    """One yes/no per channel (opt-out, do-not-disturb)."""

    sms: bool = False
    call: bool = False

    def get(self, channel: Channel) -> bool:
        return self.sms if channel is Channel.SMS else self.call

    def as_dict(self) -> dict[str, bool]:
        return {"sms": self.sms, "call": self.call}

    @classmethod
    def parse(cls, value: Any, *, field_name: str, base: ChannelFlags | None = None) -> ChannelFlags:
        """From ``{"sms": bool, "call": bool}``; a channel left out keeps its value in ``base``
        (False when there is no base), so a PATCH can change one channel."""
        if isinstance(value, ChannelFlags):
            return value
        if value is None:
            return base or cls()
        if not isinstance(value, Mapping):
            raise InvalidField(field_name, 'must be an object like {"sms": true, "call": false}')
        current = (base or cls()).as_dict()
        for key, flag in value.items():
            if key not in current:
                raise InvalidField(f"{field_name}.{key}", "unknown channel (expected sms or call)")
            if not isinstance(flag, bool):
                raise InvalidField(f"{field_name}.{key}", "must be true or false")
            current[key] = flag
        return cls(**current)


def validate_tags(values: Any, *, field_name: str = "tags") -> list[str]:
    """Trimmed, case-preserving, duplicates (case-insensitive) dropped in order; no commas, since
    CSV imports separate tags with them."""
    if not isinstance(values, list | tuple):
        raise InvalidField(field_name, "must be a list of strings")
    cleaned: list[str] = []
    seen: set[str] = set()
    for index, raw in enumerate(values):
        if not isinstance(raw, str):
            raise InvalidField(f"{field_name}[{index}]", "must be a string")
        tag = " ".join(raw.split())
        if not tag or len(tag) > MAX_TAG_LENGTH or not TAG.match(tag):
            raise InvalidField(f"{field_name}[{index}]", f"must be 1-{MAX_TAG_LENGTH} characters, no commas")
        if tag.lower() not in seen:
            seen.add(tag.lower())
            cleaned.append(tag)
    if len(cleaned) > MAX_TAGS:
        raise InvalidField(field_name, f"at most {MAX_TAGS} tags")
    return cleaned


def validate_external_id(value: Any, *, field_name: str = "external_id") -> str | None:
    if value is None:
        return None
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise InvalidField(field_name, "must be a string")
    text = str(value).strip()
    if not text:
        return None
    if len(text) > MAX_EXTERNAL_ID:
        raise InvalidField(field_name, f"is longer than {MAX_EXTERNAL_ID} characters")
    return text


# --- availability ----------------------------------------------------------------------------


class AvailabilityStatus(StrEnum):
    AVAILABLE = "available"
    AWAY = "away"
    OUT_OF_OFFICE = "out_of_office"


def _aware(value: Any, field_name: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise InvalidField(field_name, "must be an ISO 8601 date-time with an offset") from exc
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidField(field_name, "must be a date-time with an offset (e.g. 2025-03-10T00:00:00Z)")
    return value


@dataclass(frozen=True)
class Availability:
    """``available``, or ``away`` / ``out_of_office`` from ``unavailable_from`` (open: already)
    until ``unavailable_until`` (open: until changed). Outside those dates the user is available."""

    status: AvailabilityStatus = AvailabilityStatus.AVAILABLE
    unavailable_from: datetime | None = None
    unavailable_until: datetime | None = None

    @classmethod
    def parse(cls, value: Any, *, field_name: str = "availability") -> Availability:
        """From ``{"status": ..., "from": ..., "until": ...}`` (``unavailable_from`` and
        ``unavailable_until`` are accepted as the long names)."""
        if isinstance(value, Availability):
            return value
        if not isinstance(value, Mapping):
            raise InvalidField(field_name, "must be an object with status, from and until")
        unknown = set(value) - {"status", "from", "until", "unavailable_from", "unavailable_until"}
        if unknown:
            raise InvalidField(f"{field_name}.{sorted(unknown)[0]}", "unknown field")
        try:
            status = AvailabilityStatus(str(value.get("status")))
        except ValueError as exc:
            expected = ", ".join(s.value for s in AvailabilityStatus)
            raise InvalidField(f"{field_name}.status", f"must be one of {expected}") from exc
        start = _aware(value.get("from", value.get("unavailable_from")), f"{field_name}.from")
        end = _aware(value.get("until", value.get("unavailable_until")), f"{field_name}.until")
        if status is AvailabilityStatus.AVAILABLE:
            if start is not None or end is not None:
                raise InvalidField(f"{field_name}.from", "dates only apply to away or out_of_office")
            return cls()
        if start is not None and end is not None and end <= start:
            raise InvalidField(f"{field_name}.until", "must be after from")
        return cls(status, start, end)

    def is_unavailable_at(self, at: datetime) -> bool:
        if self.status is AvailabilityStatus.AVAILABLE:
            return False
        if self.unavailable_from is not None and at < self.unavailable_from:
            return False
        return not (self.unavailable_until is not None and at >= self.unavailable_until)

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "from": self.unavailable_from,
            "until": self.unavailable_until,
        }


# --- working hours ---------------------------------------------------------------------------


def _minutes(text: Any, field_name: str, *, allow_24: bool) -> int:
    if allow_24 and text == "24:00":
        return 24 * 60
    match = HHMM.match(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidField(field_name, "must be HH:MM (00:00-23:59; 24:00 as an end)")
    return int(match.group(1)) * 60 + int(match.group(2))


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


@dataclass(frozen=True)
class WorkingHours:
    """Working intervals per weekday in the user's local time: ``days[weekday]`` holds
    ``(start, end)`` minutes after midnight, start < end, not overlapping. A weekday not listed is
    a day off. Intervals do not cross midnight (split them: ``22:00-24:00`` and ``00:00-06:00``)."""

    days: tuple[tuple[str, tuple[tuple[int, int], ...]], ...]

    @classmethod
    def parse(cls, value: Any, *, field_name: str = "working_hours") -> WorkingHours | None:
        """From ``{"mon": [{"start": "09:00", "end": "17:00"}], ...}``; None means no limit."""
        if value is None or isinstance(value, WorkingHours):
            return value
        if not isinstance(value, Mapping):
            raise InvalidField(field_name, "must map weekdays (mon..sun) to lists of {start, end}")
        days: list[tuple[str, tuple[tuple[int, int], ...]]] = []
        for day, intervals in value.items():
            where = f"{field_name}.{day}"
            if day not in WEEKDAYS:
                raise InvalidField(where, f"unknown weekday (expected one of {', '.join(WEEKDAYS)})")
            if not isinstance(intervals, list) or len(intervals) > MAX_INTERVALS_PER_DAY:
                raise InvalidField(where, f"must be a list of at most {MAX_INTERVALS_PER_DAY} intervals")
            parsed: list[tuple[int, int]] = []
            for i, interval in enumerate(intervals):
                if not isinstance(interval, Mapping) or set(interval) != {"start", "end"}:
                    raise InvalidField(f"{where}[{i}]", 'must be {"start": "HH:MM", "end": "HH:MM"}')
                start = _minutes(interval["start"], f"{where}[{i}].start", allow_24=False)
                end = _minutes(interval["end"], f"{where}[{i}].end", allow_24=True)
                if end <= start:
                    raise InvalidField(f"{where}[{i}].end", "must be after start (split overnight shifts)")
                parsed.append((start, end))
            parsed.sort()
            for (_, end), (start, _) in itertools.pairwise(parsed):
                if start < end:
                    raise InvalidField(where, "intervals overlap")
            if parsed:
                days.append((day, tuple(parsed)))
        days.sort(key=lambda d: WEEKDAYS.index(d[0]))
        return cls(tuple(days))

    def contains(self, at: datetime, timezone: str) -> bool:
        """Whether ``at`` falls in a working interval, read in ``timezone``."""
        local = at.astimezone(zoneinfo.ZoneInfo(timezone))
        day = WEEKDAYS[local.weekday()]
        minute = local.hour * 60 + local.minute
        today = next((intervals for d, intervals in self.days if d == day), ())
        return any(start <= minute < end for start, end in today)

    def as_dict(self) -> dict[str, list[dict[str, str]]]:
        return {
            day: [{"start": _hhmm(s), "end": _hhmm(e)} for s, e in intervals] for day, intervals in self.days
        }


# --- teams -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Team:
    """A group of users (for reporting and for picking who works what)."""

    id: uuid.UUID
    tenant: str
    name: str
    description: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def create(
        cls,
        *,
        tenant: str,
        name: str,
        description: str | None,
        now: datetime,
        team_id: uuid.UUID | None = None,
    ) -> Team:
        return cls(
            id=team_id or uuid.uuid4(),
            tenant=tenant,
            name=clean_team_name(name),
            description=clean_description(description),
            created_at=now,
            updated_at=now,
        )

    def changed(self, changes: Mapping[str, Any], now: datetime) -> Team:
        """A copy with ``name`` and/or ``description`` replaced (only keys present are changed)."""
        return Team(
            id=self.id,
            tenant=self.tenant,
            name=clean_team_name(changes["name"]) if "name" in changes else self.name,
            description=clean_description(changes["description"])
            if "description" in changes
            else self.description,
            created_at=self.created_at,
            updated_at=now,
        )


def clean_team_name(value: Any) -> str:
    if not isinstance(value, str) or not " ".join(value.split()):
        raise InvalidField("name", "must not be empty")
    cleaned = " ".join(value.split())
    if len(cleaned) > MAX_TEAM_NAME:
        raise InvalidField("name", f"is longer than {MAX_TEAM_NAME} characters")
    return cleaned


def clean_description(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidField("description", "must be a string")
    if len(value) > MAX_DESCRIPTION:
        raise InvalidField("description", f"is longer than {MAX_DESCRIPTION} characters")
    return value.strip() or None
