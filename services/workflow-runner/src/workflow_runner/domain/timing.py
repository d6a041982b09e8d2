"""Durations and time windows of workflow steps (Wait, Timeout, due/expiry of manual actions).

Durations are ISO 8601 duration strings restricted to whole weeks, days, hours, minutes and
seconds: ``PT30M``, ``PT2H``, ``P1D``, ``P1DT12H``, ``P2W``. Months and years are refused (their
length depends on the calendar), and so are fractions. A duration is at least one second and at
most ``MAX_DURATION``.

A time window is a set of weekdays and a local ``start``-``end`` time of day (``HH:MM``, end
exclusive, ``24:00`` allowed as end), read in the contact's time zone; a contact without a time
zone is read in UTC. ``next_in_window`` is the first moment at or after a given instant that lies
inside the window.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MAX_DURATION = timedelta(days=366)
_DURATION = re.compile(
    r"^P(?:(?P<weeks>\d{1,3})W)?(?:(?P<days>\d{1,4})D)?"
    r"(?:T(?:(?P<hours>\d{1,5})H)?(?:(?P<minutes>\d{1,6})M)?(?:(?P<seconds>\d{1,8})S)?)?$"
)
WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_CLOCK = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


def parse_duration(value: object) -> timedelta:
    """The timedelta of an ISO 8601 duration string (see the module docstring); ValueError with a
    message fit for the author otherwise."""
    if not isinstance(value, str):
        raise ValueError("must be an ISO 8601 duration string such as 'PT2H' or 'P1D'")
    match = _DURATION.match(value)
    if match is None or value in ("P", "PT") or value.endswith("T"):
        raise ValueError(f"{value[:40]!r} is not an ISO 8601 duration such as 'PT30M', 'PT2H', 'P1D', 'P2W'")
    parts = {k: int(v) for k, v in match.groupdict().items() if v is not None}
    duration = timedelta(**parts)
    if duration < timedelta(seconds=1):
        raise ValueError("must be at least one second")
    if duration > MAX_DURATION:
        raise ValueError("must be at most 366 days")
    return duration


def parse_clock(value: object, *, allow_midnight_end: bool = False) -> time | None:
    """``HH:MM`` as a time; ``24:00`` (when allowed) as None, meaning the end of the day."""
    if allow_midnight_end and value == "24:00":
        return None
    if not isinstance(value, str) or not _CLOCK.match(value):
        raise ValueError("must be a time of day 'HH:MM'")
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


@dataclass(frozen=True)
class TimeWindow:
    """Weekdays (0 = Monday) and a local time-of-day range; ``end`` None means midnight."""

    weekdays: frozenset[int]
    start: time
    end: time | None

    @classmethod
    def parse(cls, days: object, start: object, end: object) -> TimeWindow:
        if days is None:
            weekdays = frozenset(range(7))
        elif isinstance(days, list) and days and all(isinstance(d, str) and d in WEEKDAYS for d in days):
            weekdays = frozenset(WEEKDAYS.index(d) for d in days)
        else:
            raise ValueError(f"days must be a non-empty list of {', '.join(WEEKDAYS)}")
        start_at = parse_clock(start)
        end_at = parse_clock(end, allow_midnight_end=True)
        if start_at is None or (end_at is not None and end_at <= start_at):
            raise ValueError("start must be before end")
        return cls(weekdays, start_at, end_at)

    def next_in_window(self, at: datetime, timezone: str | None) -> datetime:
        """The first instant >= ``at`` inside the window, in ``timezone`` (UTC when None or unknown)."""
        zone = zone_of(timezone)
        local = at.astimezone(zone)
        for offset in range(8):
            day = local.date() + timedelta(days=offset)
            if day.weekday() not in self.weekdays:
                continue
            opens = datetime.combine(day, self.start, tzinfo=zone)
            closes = (
                datetime.combine(day, self.end, tzinfo=zone)
                if self.end is not None
                else datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone)
            )
            if offset == 0 and opens <= local < closes:
                return at
            if opens > local:
                return opens.astimezone(UTC)
        raise AssertionError("a window with at least one weekday opens within 8 days")  # pragma: no cover


def zone_of(timezone: str | None) -> ZoneInfo:
    """The zone named ``timezone``; UTC when None or unknown (contacts' zones are validated on
    write, so unknown means data older than that check)."""
    if not timezone:
        return ZoneInfo("UTC")
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def format_duration(value: timedelta) -> str:
    """Seconds as ISO 8601 (``PT5400S``) for history entries."""
    return f"PT{int(value.total_seconds())}S"
