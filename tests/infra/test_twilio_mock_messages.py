"""The Twilio mock's message store: Twilio's list filters, paging and envelope (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlsplit

import pytest

from devstack.twilio_messages import BadFilter, MessageStore, date_sent_bound, list_page, twilio_date

ACCOUNT = "AC" + "a" * 32
PATH = f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def make_store(*specs: tuple[str, str, str, datetime | None]) -> MessageStore:
    """Messages (sid suffix, to, from, sent at or None), created a second apart in this order."""
    store = MessageStore()
    for number, (suffix, to, from_, sent) in enumerate(specs):
        created = T0 + timedelta(seconds=number)
        stored = store.add(
            {
                "sid": "SM" + suffix.rjust(32, "0"),
                "account_sid": ACCOUNT,
                "to": to,
                "from": from_,
                "status": "queued",
                "date_sent": None,
            },
            created,
        )
        if sent is not None:
            stored.advance("sent", sent)
    return store


def sids(page: dict[str, object]) -> list[str]:
    return [str(m["sid"])[-2:] for m in page["messages"]]  # type: ignore[attr-defined]


def test_newest_first_filtered_by_to_and_from() -> None:
    store = make_store(
        ("01", "+111", "+900", T0),
        ("02", "+222", "+900", T0),
        ("03", "+111", "+901", T0),
        ("04", "+111", "+900", T0),
    )
    page = list_page(store.of_account(ACCOUNT), PATH, [("To", "+111"), ("From", "+900")])
    assert sids(page) == ["04", "01"]
    assert (page["page"], page["page_size"], page["start"], page["end"], page["next_page_uri"]) == (
        0,
        50,
        0,
        1,
        None,
    )
    assert page["uri"] == f"{PATH}?To=%2B111&From=%2B900&PageSize=50&Page=0"
    assert list_page(store.of_account("AC" + "b" * 32), PATH, [])["messages"] == []


def test_date_sent_filters_are_inclusive_and_skip_unsent_messages() -> None:
    store = make_store(
        ("01", "+111", "+900", T0 - timedelta(days=1)),
        ("02", "+111", "+900", T0),
        ("03", "+111", "+900", T0 + timedelta(seconds=30)),
        ("04", "+111", "+900", None),  # still queued: no date_sent
    )
    messages = store.of_account(ACCOUNT)

    def with_filter(key: str, value: str) -> list[str]:
        return sids(list_page(messages, PATH, [(key, value)]))

    assert with_filter("DateSent>", "2026-03-01T12:00:00Z") == ["03", "02"]
    assert with_filter("DateSent>", "2026-03-01T12:00:01Z") == ["03"]
    assert with_filter("DateSent<", "2026-03-01T12:00:00Z") == ["02", "01"]
    assert with_filter("DateSent", "2026-03-01") == ["03", "02"]  # a date is the whole (GMT) day
    assert with_filter("DateSent<", "2026-02-28") == ["01"]  # on or before that day
    assert with_filter("DateSent", "2026-03-01T12:00:30Z") == ["03"]
    assert with_filter("DateSent>", "Sun, 01 Mar 2026 12:00:00 +0000") == ["03", "02"]
    assert sids(list_page(messages, PATH, [])) == ["04", "03", "02", "01"]  # no filter: unsent too
    with pytest.raises(BadFilter):
        list_page(messages, PATH, [("DateSent>", "yesterday")])
    assert date_sent_bound("DateSent", "2026-03-01").contains(
        T0 + timedelta(hours=11, minutes=59, seconds=59)
    )


def test_pages_follow_the_page_token_even_when_messages_arrive_between_pages() -> None:
    store = make_store(*[(f"{n:02d}", "+111", "+900", T0) for n in range(1, 6)])
    first = list_page(store.of_account(ACCOUNT), PATH, [("To", "+111"), ("PageSize", "2")])
    assert sids(first) == ["05", "04"]
    next_uri = first["next_page_uri"]
    assert isinstance(next_uri, str) and "PageToken=PASM" in next_uri and "Page=1" in next_uri
    store.add({"sid": "SM" + "99".rjust(32, "0"), "account_sid": ACCOUNT, "to": "+111", "from": "+900"}, T0)

    split = urlsplit(next_uri)
    second = list_page(store.of_account(ACCOUNT), split.path, parse_qsl(split.query))
    assert sids(second) == ["03", "02"]  # not shifted by the new message
    assert (second["page"], second["start"], second["end"]) == (1, 3, 4)
    assert second["previous_page_uri"] == f"{PATH}?To=%2B111&PageSize=2&Page=0"
    last_uri = second["next_page_uri"]
    assert isinstance(last_uri, str)
    split = urlsplit(last_uri)
    third = list_page(store.of_account(ACCOUNT), split.path, parse_qsl(split.query))
    assert sids(third) == ["01"] and third["next_page_uri"] is None


def test_messages_move_to_sent_with_a_date_sent_and_fetch_is_per_account() -> None:
    store = make_store(("01", "+111", "+900", None))
    stored = store.get(ACCOUNT, "SM" + "01".rjust(32, "0"))
    assert stored is not None and stored.resource["date_sent"] is None
    stored.advance("sent", T0 + timedelta(seconds=1, microseconds=500))
    stored.advance("delivered", T0 + timedelta(seconds=2))
    assert stored.resource["status"] == "delivered"
    assert (
        stored.resource["date_sent"]
        == twilio_date(T0 + timedelta(seconds=1))
        == "Sun, 01 Mar 2026 12:00:01 +0000"
    )
    assert store.get("AC" + "b" * 32, stored.sid) is None
    store.clear()
    assert len(store) == 0


def test_the_store_keeps_the_newest_messages_only() -> None:
    store = MessageStore(max_messages=2)
    for suffix in ("01", "02", "03"):
        store.add({"sid": "SM" + suffix.rjust(32, "0"), "account_sid": ACCOUNT}, T0)
    assert sids(list_page(store.of_account(ACCOUNT), PATH, [])) == ["03", "02"]
    assert store.get(ACCOUNT, "SM" + "01".rjust(32, "0")) is None
