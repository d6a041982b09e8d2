"""Checks at the moment of work: may this action's SMS or call go out now?

Run when Let's Start hands an action out, when a person sends an SMS or places a call, and when a
scheduled SMS falls due. A blocked action is skipped by the system with the reason (ActionSkipped,
``skipped_by`` null), never left silently. Plain Python: the clock and the contact are passed in.

What is checked, in order: the contact was deleted; opted out of the channel; do-not-disturb on
the channel; the number is a valid phone number (``phonenumbers``); the local time in the
contact's time zone is outside quiet hours. The contact's state comes from workflow-runner's
ContactUpdated events when action-queue has seen one, else from the action's snapshot (which has
no opt-out, do-not-disturb or time zone). Quiet hours are checked only in a time zone the contact
record names: guessing one from the number would be wrong for every number that spans zones
(all of +1), so a contact without a time zone is not held back by quiet hours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers

from action_queue.domain.model import ManualAction
from manual_actions.contracts import ActionType


@dataclass(frozen=True)
class ContactState:
    """The contact as workflow-runner last described it (ContactUpdated), with its version."""

    phone: str | None
    timezone: str | None
    opted_out: frozenset[ActionType] = frozenset()
    do_not_disturb: frozenset[ActionType] = frozenset()
    deleted: bool = False
    version: int = 0
    # ContactUpdated v2, for rendering SMS templates with current data (None: never heard).
    name: str | None = None
    email: str | None = None
    custom_fields: dict[str, str | bool | int | float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class QuietHours:
    """No SMS or call between ``start`` and ``end``, local time of the contact (wraps midnight
    when ``start`` > ``end``). Default 21:00 to 08:00; each tenant may set its own (/v1/settings)."""

    start: time = time(21, 0)
    end: time = time(8, 0)

    def contains(self, local: time) -> bool:
        if self.start <= self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end


DEFAULT_QUIET_HOURS = QuietHours()
_CHANNEL = {ActionType.SMS: "SMS", ActionType.CALL: "calls"}


def current_phone(action: ManualAction, contact: ContactState | None) -> str | None:
    """The number to use: the contact's current one if known, else the snapshot's."""
    if contact is not None:
        return contact.phone
    return action.contact.phone


@lru_cache(maxsize=65_536)
def _number_problem(phone: str) -> str | None:
    """Why ``phone`` is not a usable phone number (None if it is). Cached: the answer depends only on
    the text and phonenumbers' metadata, parsing and validating were most of the checks' CPU in a
    profile of Let's Start, and the same numbers come up again and again."""
    try:
        parsed = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return f"the contact's number {phone} is not a phone number"
    if not phonenumbers.is_valid_number(parsed):
        return f"the contact's number {phone} is not a valid phone number"
    return None


def _zone(name: str | None) -> ZoneInfo | None:
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def blocked_reason(action: ManualAction, contact: ContactState | None, now: datetime,
                   quiet_hours: QuietHours = DEFAULT_QUIET_HOURS) -> str | None:
    """Why the action's SMS or call must not go out at ``now``; None when it may."""
    channel = _CHANNEL[action.type]
    if contact is not None:
        if contact.deleted:
            return "the contact was deleted"
        if action.type in contact.opted_out:
            return f"the contact opted out of {channel}"
        if action.type in contact.do_not_disturb:
            return f"do not disturb is on for {channel} to this contact"
    phone = current_phone(action, contact)
    if not phone:
        return "the contact has no phone number"
    problem = _number_problem(phone)
    if problem is not None:
        return problem
    zone = _zone(contact.timezone if contact else None)
    if zone is not None:
        local = now.astimezone(zone)
        if quiet_hours.contains(local.time()):
            return (f"quiet hours: it is {local:%H:%M} in {zone.key} for the contact, between "
                    f"{quiet_hours.start:%H:%M} and {quiet_hours.end:%H:%M}")
    return None
