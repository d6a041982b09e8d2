"""The Twilio mock's memory of the messages it created: Twilio's Messages list and fetch answers.

Prism answers ``GET .../Messages.json`` and ``GET .../Messages/{Sid}.json`` with the spec's static
examples, which never contain what a client created. The proxy (``devstack.twilio_proxy``) still
sends those requests through Prism (so they are validated against the contract), and when Prism
accepts them it answers from this store instead, the way Twilio would:

* a message is remembered from its successful create (``queued``, no ``date_sent``) and moves to
  ``sent`` (``date_sent`` set) and ``delivered`` as its status callbacks are due, whether or not
  the create asked for callbacks;
* the list is the account's messages, newest first, filtered like Twilio's: ``To`` and ``From``
  exactly; ``DateSent>`` (on or after), ``DateSent<`` (on or before) and ``DateSent`` (on) with a
  GMT date (``YYYY-MM-DD``: the whole day) or a date-time (to the second; the SDK sends
  ``YYYY-MM-DDTHH:MM:SSZ``). A message not sent yet has no ``date_sent`` and matches no
  ``DateSent`` filter (as at Twilio);
* pages of ``PageSize`` (default 50) messages with Twilio's envelope (``messages``, ``page``,
  ``page_size``, ``start``, ``end``, ``uri``, ``first_page_uri``, ``next_page_uri``,
  ``previous_page_uri``); ``next_page_uri`` carries a ``PageToken`` naming the last message of the
  page, so messages created between two page requests do not shift the next page;
* fetching a sid the account never created is Twilio's 404 (code 20404).

Pure functions and a plain class; no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode

DEFAULT_PAGE_SIZE = 50
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
FILTER_KEYS = ("To", "From", "DateSent", "DateSent<", "DateSent>")


class BadFilter(ValueError):
    """A list parameter the mock cannot interpret (Prism accepted its format)."""


def twilio_date(moment: datetime) -> str:
    """A timestamp as Twilio writes it in resources: RFC 2822 in GMT (``Fri, 24 May 2019 17:44:46 +0000``)."""
    return format_datetime(moment.astimezone(UTC).replace(microsecond=0))


@dataclass
class StoredMessage:
    """One created message: its resource JSON as the API returns it, and its times."""

    resource: dict[str, Any]
    created: datetime
    sent: datetime | None = None

    @property
    def sid(self) -> str:
        return str(self.resource["sid"])

    def advance(self, status: str, now: datetime) -> None:
        """Move to ``status`` at ``now`` (``sent`` also sets ``date_sent``, as at Twilio)."""
        self.resource["status"] = status
        self.resource["date_updated"] = twilio_date(now)
        if status == "sent" and self.sent is None:
            self.sent = now.replace(microsecond=0)
            self.resource["date_sent"] = twilio_date(self.sent)


@dataclass(frozen=True)
class _Bound:
    """An interval of ``date_sent`` values, both ends inclusive (None = open)."""

    low: datetime | None
    high: datetime | None

    def contains(self, moment: datetime) -> bool:
        return (self.low is None or moment >= self.low) and (self.high is None or moment <= self.high)


def _parse_moment(value: str) -> tuple[datetime, bool]:
    """``(moment in UTC, is a whole day)`` for a ``DateSent`` value; BadFilter when unreadable."""
    text = value.strip()
    if _DATE_ONLY.match(text):
        try:
            day = date.fromisoformat(text)
        except ValueError as exc:
            raise BadFilter(f"{value!r} is not a date") from exc
        return datetime(day.year, day.month, day.day, tzinfo=UTC), True
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            moment = parsedate_to_datetime(text)
        except (TypeError, ValueError) as exc:
            raise BadFilter(f"{value!r} is not a date or date-time") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # Twilio reads these filters as GMT
    return moment.astimezone(UTC).replace(microsecond=0), False


def date_sent_bound(key: str, value: str) -> _Bound:
    """The ``date_sent`` interval selected by ``DateSent``, ``DateSent<`` or ``DateSent>``."""
    moment, whole_day = _parse_moment(value)
    last_second = moment + timedelta(days=1) - timedelta(seconds=1) if whole_day else moment
    if key == "DateSent>":
        return _Bound(moment, None)
    if key == "DateSent<":
        return _Bound(None, last_second)
    if key == "DateSent":
        return _Bound(moment, last_second)
    raise BadFilter(f"{key} is not a DateSent filter")


def matches(message: StoredMessage, filters: Mapping[str, str]) -> bool:
    """Whether ``message`` passes every Twilio list filter in ``filters``."""
    resource = message.resource
    if "To" in filters and resource.get("to") != filters["To"]:
        return False
    if "From" in filters and resource.get("from") != filters["From"]:
        return False
    for key in ("DateSent", "DateSent<", "DateSent>"):
        if key in filters and (
            message.sent is None or not date_sent_bound(key, filters[key]).contains(message.sent)
        ):
            return False
    return True


def list_page(
    messages: Iterable[StoredMessage], path: str, query: Iterable[tuple[str, str]]
) -> dict[str, Any]:
    """Twilio's list answer for ``GET path?query`` over ``messages`` (oldest first, as stored).

    Raises BadFilter for a filter value the mock cannot read.
    """
    params = list(query)
    filters = {key: value for key, value in params if key in FILTER_KEYS}
    for key in ("DateSent", "DateSent<", "DateSent>"):
        if key in filters:
            date_sent_bound(key, filters[key])  # unreadable values fail even on an empty store
    given = dict(params)
    try:
        page_size = int(given.get("PageSize") or DEFAULT_PAGE_SIZE)
        page = int(given.get("Page") or 0)
    except ValueError as exc:
        raise BadFilter("Page and PageSize must be integers") from exc
    token = given.get("PageToken") or ""
    selected = [m for m in reversed(list(messages)) if matches(m, filters)]  # newest first
    start = page * page_size
    if token.startswith("PA"):
        # The token names the last message of the previous page: continue right after it.
        after = token[2:]
        position = next((i for i, m in enumerate(selected) if m.sid == after), None)
        if position is not None:
            start = position + 1
    chunk = selected[start : start + page_size]
    filter_pairs = [(key, value) for key, value in params if key in FILTER_KEYS]

    def uri(page_number: int, page_token: str | None = None) -> str:
        pairs = [*filter_pairs, ("PageSize", str(page_size)), ("Page", str(page_number))]
        if page_token:
            pairs.append(("PageToken", page_token))
        return f"{path}?{urlencode(pairs)}"

    has_more = start + page_size < len(selected)
    return {
        "end": start + len(chunk) - 1 if chunk else start,
        "first_page_uri": uri(0),
        "next_page_uri": uri(page + 1, "PA" + chunk[-1].sid) if has_more and chunk else None,
        "page": page,
        "page_size": page_size,
        "previous_page_uri": uri(page - 1) if page > 0 else None,
        "messages": [dict(m.resource) for m in chunk],
        "start": start,
        "uri": uri(page, token or None),
    }


MAX_MESSAGES = 100_000


class MessageStore:
    """The messages the mock created, by sid, in creation order: the newest ``max_messages`` (a
    benchmark sending through the mock must not grow its memory without bound)."""

    def __init__(self, max_messages: int = MAX_MESSAGES) -> None:
        self._by_sid: dict[str, StoredMessage] = {}
        self._max_messages = max_messages

    def add(self, resource: dict[str, Any], created: datetime) -> StoredMessage:
        stored = StoredMessage(resource=dict(resource), created=created)
        self._by_sid[stored.sid] = stored
        while len(self._by_sid) > self._max_messages:
            del self._by_sid[next(iter(self._by_sid))]  # dicts keep insertion order: the oldest
        return stored

    def get(self, account: str, sid: str) -> StoredMessage | None:
        found = self._by_sid.get(sid)
        return found if found is not None and found.resource.get("account_sid") == account else None

    def of_account(self, account: str) -> list[StoredMessage]:
        return [m for m in self._by_sid.values() if m.resource.get("account_sid") == account]

    def clear(self) -> None:
        self._by_sid.clear()

    def __len__(self) -> int:
        return len(self._by_sid)
