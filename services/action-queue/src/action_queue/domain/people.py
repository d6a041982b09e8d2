"""Team members (from workflow-runner's UserUpdated) and tenant queue settings. Plain Python.

A manager's scope is their team: the users of the directory with the manager's ``team_id``. A user
is *out* when their availability says out_of_office (or away, when the tenant counts away as out)
and ``now`` lies between the optional dates (an open end means "until changed").
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, time
from enum import StrEnum

from action_queue.domain.checks import QuietHours
from action_queue.domain.errors import InvalidField
from action_queue.domain.model import OUTCOME_PATTERN

AVAILABLE = "available"
AWAY = "away"
OUT_OF_OFFICE = "out_of_office"


@dataclass(frozen=True)
class UserState:
    """A user as workflow-runner last described them, with the envelope sequence as ``version``."""

    user_id: uuid.UUID
    name: str
    role: str
    team_id: uuid.UUID | None = None
    phone: str | None = None
    timezone: str | None = None
    availability: str = AVAILABLE
    unavailable_from: datetime | None = None
    unavailable_until: datetime | None = None
    deleted: bool = False
    version: int = 0

    def is_out(self, now: datetime, *, away_counts: bool) -> bool:
        """Whether the user takes no work at ``now`` (deleted users never do)."""
        if self.deleted:
            return True
        statuses = {OUT_OF_OFFICE, AWAY} if away_counts else {OUT_OF_OFFICE}
        if self.availability not in statuses:
            return False
        if self.unavailable_from is not None and now < self.unavailable_from:
            return False
        return self.unavailable_until is None or now < self.unavailable_until


class OutOfOffice(StrEnum):
    """What happens to the queued actions of a user who is out."""

    REDISTRIBUTE = "redistribute"  # round robin to the available members of their team
    HOLD = "hold"  # stay theirs, not offered by Let's Start until they are back


@dataclass(frozen=True)
class Outcome:
    slug: str
    label: str


OUTCOME_SLUG = OUTCOME_PATTERN
MAX_OUTCOMES = 50
DEFAULT_OUTCOMES: tuple[Outcome, ...] = (
    Outcome("connected", "Connected"),
    Outcome("no_answer", "No answer"),
    Outcome("voicemail", "Left voicemail"),
    Outcome("busy", "Busy"),
)


@dataclass(frozen=True)
class QueueSettings:
    """A tenant's queue settings; a tenant that never saved any gets these defaults."""

    outcomes: tuple[Outcome, ...] = DEFAULT_OUTCOMES
    quiet_hours: QuietHours = field(default_factory=QuietHours)
    out_of_office: OutOfOffice = OutOfOffice.REDISTRIBUTE
    away_counts_as_out: bool = False
    version: int = 0

    def __post_init__(self) -> None:
        if not self.outcomes:
            raise InvalidField("outcomes", "at least one call outcome is required")
        if len(self.outcomes) > MAX_OUTCOMES:
            raise InvalidField("outcomes", f"at most {MAX_OUTCOMES} call outcomes are allowed")
        seen: set[str] = set()
        for i, outcome in enumerate(self.outcomes):
            if not OUTCOME_SLUG.match(outcome.slug):
                raise InvalidField(f"outcomes.{i}.slug",
                                   "a slug is a lower-case word: a-z first, then a-z, 0-9 or _ (64 at most)")
            if outcome.slug in seen:
                raise InvalidField(f"outcomes.{i}.slug", f"outcome {outcome.slug!r} is listed twice")
            if not outcome.label.strip() or len(outcome.label) > 100:
                raise InvalidField(f"outcomes.{i}.label", "a label has 1 to 100 characters")
            seen.add(outcome.slug)
        if self.quiet_hours.start == self.quiet_hours.end:
            raise InvalidField("quiet_hours.end", "quiet hours must end at another time than they start")

    def check_outcome(self, slug: str) -> None:
        """Raise InvalidField("outcome") unless ``slug`` is one of the tenant's call outcomes."""
        slugs = [o.slug for o in self.outcomes]
        if slug not in slugs:
            raise InvalidField("outcome", f"outcome {slug!r} is not one of this tenant's call outcomes: "
                                          + ", ".join(slugs))


def parse_clock(value: str, field_name: str) -> time:
    """``HH:MM`` (24-hour) as a time, else InvalidField naming ``field_name``."""
    if not re.fullmatch(r"([01][0-9]|2[0-3]):[0-5][0-9]", value):
        raise InvalidField(field_name, "use HH:MM, 24-hour clock")
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))
