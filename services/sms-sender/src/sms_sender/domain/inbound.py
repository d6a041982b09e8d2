"""What an SMS a contact sent us means: carrier keywords and the checks on Twilio's webhook fields.

Plain rules, no I/O. Keywords follow Twilio's default handling on long codes (its "Advanced
Opt-Out" defaults): only a message that is exactly one keyword, ignoring case and the whitespace
around it, counts. "STOP" opts out; "Please stop" is an ordinary reply (Twilio does not block on it
either, so treating it as an opt-out would make us stricter than the carrier and hide a reply).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final


class Keyword(StrEnum):
    """The ``keyword`` of an SmsReceived event (None: an ordinary reply)."""

    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"
    HELP = "help"


# Twilio's default English keywords (https://www.twilio.com/docs/messaging/tutorials/advanced-opt-out
# and Twilio's "support for opt-out keywords" article). Twilio blocks our number for the sender on an
# opt-out keyword and lifts the block on an opt-in keyword whatever we do; these events let our
# platform agree with it.
KEYWORDS: Final[dict[str, Keyword]] = {
    **dict.fromkeys(
        ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"), Keyword.OPT_OUT
    ),
    **dict.fromkeys(("START", "YES", "UNSTOP"), Keyword.OPT_IN),
    **dict.fromkeys(("HELP", "INFO"), Keyword.HELP),
}

# With Advanced Opt-Out enabled on a Messaging Service, Twilio adds ``OptOutType`` to the webhook
# when the message matched one of the service's keywords, including custom and localised ones we
# cannot know. When present it is Twilio's own verdict and wins over our list.
OPT_OUT_TYPES: Final[dict[str, Keyword]] = {
    "STOP": Keyword.OPT_OUT,
    "START": Keyword.OPT_IN,
    "HELP": Keyword.HELP,
}


def detect_keyword(body: str, opt_out_type: str | None = None) -> Keyword | None:
    """The carrier keyword ``body`` is, or None for an ordinary reply.

    ``opt_out_type`` is Twilio's ``OptOutType`` webhook parameter, if any (STOP, START or HELP,
    any case); a known value decides. Otherwise the whole body, trimmed and upper-cased, must be
    one of ``KEYWORDS``.
    """
    if opt_out_type:
        verdict = OPT_OUT_TYPES.get(opt_out_type.strip().upper())
        if verdict is not None:
            return verdict
    return KEYWORDS.get(body.strip().upper())


# The same rule as the contract's E164 (``manual_actions.contracts.messages``): what the event
# will accept, checked here so a bad webhook is answered 400 naming the field instead of failing
# deep in the handler.
E164: Final = re.compile(r"\+[1-9][0-9]{6,14}")
MESSAGE_SID: Final = re.compile(r"(SM|MM)[0-9a-fA-F]{32}")

# SmsReceived.body holds at most 1,600 characters, Twilio's own limit for one message. A longer
# body is stored whole and published cut to this length (the consumer acts on replies and
# keywords, never on the tail of a very long text).
MAX_PUBLISHED_BODY: Final = 1600


class InvalidField(ValueError):
    """A webhook parameter that is missing or malformed; ``field`` is its form name."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class IncomingSms:
    """A validated incoming message. ``body`` is the text as received (never logged)."""

    message_sid: str
    account_sid: str | None
    from_phone: str
    to_phone: str
    body: str
    keyword: Keyword | None

    @property
    def published_body(self) -> str:
        return self.body[:MAX_PUBLISHED_BODY]


def parse_incoming(params: Mapping[str, str]) -> IncomingSms:
    """Validate Twilio's incoming-message parameters (``MessageSid``, ``From``, ``To``, ``Body``,
    optional ``AccountSid`` and ``OptOutType``).

    Raises InvalidField for the first missing or malformed one, checked in the order
    MessageSid, From, To. A missing ``Body`` is an empty text (an MMS with only media).
    """
    sid = (params.get("MessageSid") or "").strip()
    if not sid:
        raise InvalidField("MessageSid", "MessageSid is missing.")
    if not MESSAGE_SID.fullmatch(sid):
        raise InvalidField("MessageSid", "MessageSid must be SM or MM followed by 32 hex digits.")
    for name in ("From", "To"):
        value = (params.get(name) or "").strip()
        if not value:
            raise InvalidField(name, f"{name} is missing.")
        if not E164.fullmatch(value):
            raise InvalidField(name, f"{name} must be a phone number in E.164 format (+ and 7-15 digits).")
    body = params.get("Body") or ""
    return IncomingSms(
        message_sid=sid,
        account_sid=params.get("AccountSid") or None,
        from_phone=params["From"].strip(),
        to_phone=params["To"].strip(),
        body=body,
        keyword=detect_keyword(body, params.get("OptOutType")),
    )
