"""Recognising, in Twilio's message list, the SMS a request with an unknown outcome created."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sms_sender.domain.reconcile import ListedMessage, creation_window, find_sent_message

CLAIMED = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
WINDOW = creation_window(CLAIMED, timedelta(seconds=10), timedelta(seconds=120))


def message(sid: str = "SM1", **changes: object) -> ListedMessage:
    fields: dict[str, object] = {
        "sid": sid,
        "direction": "outbound-api",
        "body": "Hi Ada, it's Sam.",
        "date_created": CLAIMED + timedelta(seconds=1),
        "status": "delivered",
        "error_code": None,
        **changes,
    }
    return ListedMessage(**fields)  # type: ignore[arg-type]


def find(*candidates: ListedMessage, known: frozenset[str] = frozenset()) -> ListedMessage | None:
    return find_sent_message(candidates, body="Hi Ada, it's Sam.", window=WINDOW, known_sids=known)


def test_window_spans_the_request_and_the_clock_margin() -> None:
    assert (CLAIMED - timedelta(seconds=120), CLAIMED + timedelta(seconds=130)) == WINDOW


def test_the_message_with_our_text_created_during_the_request_is_ours() -> None:
    assert find(message()) == message()


def test_nothing_fits_an_empty_list() -> None:
    assert find() is None


def test_another_text_is_not_ours() -> None:
    assert find(message(body="Hi Ada, it's Sam")) is None  # one character differs
    assert find(message(body=None)) is None


def test_an_inbound_message_is_not_ours() -> None:
    assert find(message(direction="inbound")) is None
    assert find(message(direction=None)) is None


def test_outbound_reply_and_call_directions_count() -> None:
    assert find(message(direction="outbound-reply")) is not None


def test_a_message_created_outside_the_window_is_not_ours() -> None:
    assert find(message(date_created=CLAIMED - timedelta(seconds=121))) is None
    assert find(message(date_created=CLAIMED + timedelta(seconds=131))) is None
    assert find(message(date_created=None)) is None
    assert find(message(date_created=CLAIMED - timedelta(seconds=120))) is not None  # bounds included


def test_a_message_another_row_owns_is_not_ours() -> None:
    assert find(message("SM1"), known=frozenset({"SM1"})) is None
    assert find(message("SM1"), message("SM2"), known=frozenset({"SM1"})) == message("SM2")


def test_of_several_the_earliest_is_taken() -> None:
    early = message("SMb", date_created=CLAIMED)
    late = message("SMa", date_created=CLAIMED + timedelta(seconds=5))
    assert find(late, early) == early
