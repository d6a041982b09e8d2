"""Phone number rules: every stored number is a valid number in E.164 form."""

from __future__ import annotations

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat

from workflow_runner.domain.errors import InvalidField

MAX_INPUT_LENGTH = 32


def normalise_phone(raw: str, *, field: str = "phone") -> str:
    """Return ``raw`` as an E.164 string (``+14155552671``) or raise ``InvalidField(field, reason)``.

    Input must be international (leading ``+`` and country code; spaces, dashes and brackets are
    allowed) and a valid number for its country according to ``phonenumbers``' metadata. We do not
    guess a default country: a tenant may have contacts anywhere.
    """
    text = raw.strip()
    if not text:
        raise InvalidField(field, "must not be empty")
    if len(text) > MAX_INPUT_LENGTH:
        raise InvalidField(field, f"is longer than {MAX_INPUT_LENGTH} characters")
    if not text.startswith("+"):
        raise InvalidField(field, "must be international: '+', country code, number (e.g. +14155552671)")
    try:
        parsed = phonenumbers.parse(text, None)
    except NumberParseException as exc:
        raise InvalidField(field, f"is not a phone number ({exc})") from exc
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidField(field, "is not a valid phone number for its country code")
    return phonenumbers.format_number(parsed, PhoneNumberFormat.E164)
