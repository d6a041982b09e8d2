"""Carrier keywords and the checks on Twilio's incoming-message fields (pure functions, no I/O)."""

from __future__ import annotations

import pytest

from sms_sender.domain.inbound import (
    MAX_PUBLISHED_BODY,
    InvalidField,
    Keyword,
    detect_keyword,
    parse_incoming,
)

SID = "SM" + "0123456789abcdef" * 2


@pytest.mark.parametrize(
    "body",
    [
        "STOP",
        "stop",
        "Stop",
        " STOP ",
        "STOP\n",
        "\tstop\r\n",
        "STOPALL",
        "unsubscribe",
        "Cancel",
        "END",
        "quit",
        "REVOKE",
        "optout",
        "OptOut",
    ],
)
def test_opt_out_keywords(body: str) -> None:
    assert detect_keyword(body) is Keyword.OPT_OUT


@pytest.mark.parametrize("body", ["START", "start", " Yes ", "UNSTOP", "unstop\n"])
def test_opt_in_keywords(body: str) -> None:
    assert detect_keyword(body) is Keyword.OPT_IN


@pytest.mark.parametrize("body", ["HELP", "help", " Info "])
def test_help_keywords(body: str) -> None:
    assert detect_keyword(body) is Keyword.HELP


@pytest.mark.parametrize(
    "body",
    [
        "",
        "   ",
        "Please stop",  # not the whole body: an ordinary reply, as Twilio treats it
        "STOP PLEASE",
        "stop.",
        "STOP ALL",  # not one of Twilio's default keywords (STOPALL is)
        "S TOP",
        "yes please",
        "Can you help?",
        "Sure, call me tomorrow",
        "stopp",
        "ARRET",  # Twilio's French keywords are only in an Advanced Opt-Out configuration
    ],
)
def test_ordinary_replies_have_no_keyword(body: str) -> None:
    assert detect_keyword(body) is None


@pytest.mark.parametrize(
    ("opt_out_type", "body", "expected"),
    [
        ("STOP", "ARRET", Keyword.OPT_OUT),  # a custom keyword Twilio matched for us
        ("stop", "Basta", Keyword.OPT_OUT),
        ("START", "Oui", Keyword.OPT_IN),
        ("HELP", "AIDE", Keyword.HELP),
        ("", "STOP", Keyword.OPT_OUT),  # blank: our own list decides
        ("SOMETHING-NEW", "START", Keyword.OPT_IN),  # an OptOutType we do not know: our list decides
        ("SOMETHING-NEW", "hello", None),
    ],
)
def test_twilios_opt_out_type_wins_when_known(opt_out_type: str, body: str, expected: Keyword | None) -> None:
    assert detect_keyword(body, opt_out_type) is expected


def _params(**overrides: str | None) -> dict[str, str]:
    params: dict[str, str | None] = {
        "MessageSid": SID,
        "AccountSid": "AC" + "f" * 32,
        "From": "+14155550100",
        "To": "+15005550006",
        "Body": " STOP ",
        **overrides,
    }
    return {k: v for k, v in params.items() if v is not None}


def test_parse_incoming_keeps_the_body_as_received_and_flags_the_keyword() -> None:
    sms = parse_incoming(_params())
    assert (sms.message_sid, sms.from_phone, sms.to_phone, sms.body, sms.keyword) == (
        SID,
        "+14155550100",
        "+15005550006",
        " STOP ",
        Keyword.OPT_OUT,
    )
    assert sms.account_sid == "AC" + "f" * 32


def test_parse_incoming_accepts_an_mms_without_body() -> None:
    sms = parse_incoming(_params(MessageSid="MM" + "a" * 32, Body=None))
    assert (sms.body, sms.keyword) == ("", None)


def test_a_long_body_is_published_cut_to_the_contract_limit() -> None:
    sms = parse_incoming(_params(Body="x" * 2000))
    assert len(sms.body) == 2000
    assert sms.published_body == "x" * MAX_PUBLISHED_BODY


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"MessageSid": None}, "MessageSid"),
        ({"MessageSid": ""}, "MessageSid"),
        ({"MessageSid": "SM123"}, "MessageSid"),
        ({"MessageSid": "CA" + "0" * 32}, "MessageSid"),  # a call sid
        ({"From": None}, "From"),
        ({"From": " "}, "From"),
        ({"From": "4155550100"}, "From"),  # no +
        ({"From": "+04155550100"}, "From"),
        ({"From": "whatsapp:+14155550100"}, "From"),
        ({"From": "+1415555010012345"}, "From"),  # 16 digits
        ({"To": None}, "To"),
        ({"To": "Acme"}, "To"),
        ({"MessageSid": None, "From": None}, "MessageSid"),  # the first bad field is named
    ],
)
def test_parse_incoming_names_the_bad_field(overrides: dict[str, str | None], field: str) -> None:
    with pytest.raises(InvalidField) as raised:
        parse_incoming(_params(**overrides))
    assert raised.value.field == field
