"""Finding, in Twilio's list of messages, the SMS a request with an unknown outcome may have created.

Plain rules, no I/O. Twilio's Message resource does not return the StatusCallback URL (which
carries our command id), so a message is recognised by what it does return: it went out from our
number to the row's number (both filtered by Twilio: ``To``/``From`` of the list request), it is
outbound, its text is exactly the row's text, it was created while the request could have been
running, and no other row of ours already owns its sid. Whatever Twilio shows that fits is the
SMS this request created: another of our requests with the same text to the same number in the
same minutes would own its sid, unless it is unknown too; then the first one reconciled takes
the message and the other stays unknown, which keeps "at most one SMS reported per SMS sent".
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class ListedMessage:
    """The fields of a Twilio Message resource the match looks at."""

    sid: str
    direction: str | None
    body: str | None
    date_created: datetime | None
    status: str | None
    error_code: int | None


def creation_window(
    claimed_at: datetime, request_timeout: timedelta, skew: timedelta
) -> tuple[datetime, datetime]:
    """When Twilio may have created the message of a request claimed at ``claimed_at``: from the
    claim to the end of the request's timeout, widened by ``skew`` either way for the clocks."""
    return claimed_at - skew, claimed_at + request_timeout + skew


def find_sent_message(
    candidates: Iterable[ListedMessage],
    *,
    body: str,
    window: tuple[datetime, datetime],
    known_sids: Collection[str],
) -> ListedMessage | None:
    """The earliest candidate that is this request's SMS (see the module docstring), or None."""
    start, end = window
    fitting = [
        m
        for m in candidates
        if (m.direction or "").startswith("outbound")
        and m.body == body
        and m.date_created is not None
        and start <= m.date_created <= end
        and m.sid not in known_sids
    ]
    return min(fitting, key=lambda m: (m.date_created, m.sid)) if fitting else None
