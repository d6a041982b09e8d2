"""What an outgoing SMS's result is, and how a failure is explained to the person working the queue.

Plain rules, no I/O. Each command gets one result event (SmsSent or SmsFailed); the only second
one is an SmsSent after an "unknown" SmsFailed, when Twilio's callback shows the SMS did go out
(the callback carries our command id, so a message we lost track of still reports itself).
"""

from __future__ import annotations

from enum import StrEnum

from manual_actions.twilio_support import DispatchFailure, FailureKind


class SmsResult(StrEnum):
    """The result this service has published for a command (none yet: ``None``)."""

    SENT = "sent"
    FAILED = "failed"
    UNKNOWN = "unknown"  # published as SmsFailed; may still be corrected to SENT by a callback


# Twilio MessageStatus values that settle the result. Others (queued, sending, accepted, scheduled,
# canceled before sending...) are recorded but change nothing.
SENT_STATUSES = frozenset({"sent", "delivered"})
FAILED_STATUSES = frozenset({"failed", "undelivered"})


def result_for_status(current: SmsResult | None, message_status: str) -> SmsResult | None:
    """The result a status callback establishes now, or None when it publishes nothing.

    * sent/delivered: SENT, unless SENT or FAILED was already published (only once per command);
    * failed/undelivered: FAILED when nothing was published yet. After an "unknown" SmsFailed
      the action is already back in the person's queue, so a second failure would add nothing;
    * anything else: nothing.
    """
    if message_status in SENT_STATUSES:
        return SmsResult.SENT if current in (None, SmsResult.UNKNOWN) else None
    if message_status in FAILED_STATUSES:
        return SmsResult.FAILED if current is None else None
    return None


def result_for_failure(failure: DispatchFailure) -> SmsResult:
    return SmsResult.UNKNOWN if failure.kind is FailureKind.UNKNOWN else SmsResult.FAILED


# Twilio error codes a person can act on, in words they understand (https://www.twilio.com/docs/api/errors).
_ERROR_EXPLANATIONS: dict[int, str] = {
    21211: "The phone number is not a valid phone number",
    21214: "The phone number cannot be reached",
    21408: "Sending SMS to this country or region is not enabled for our sender",
    21606: "Our sender number cannot send SMS",
    21610: "The contact has opted out of SMS from us (replied STOP)",
    21612: "SMS cannot be sent between our number and this number",
    21614: "The phone number is not a mobile number and cannot receive SMS",
    21617: "The message is too long",
    21659: "Our sender number is not a Twilio number that can send SMS",
    21660: "Our sender number does not belong to our Twilio account",
    30003: "The phone is switched off or out of coverage",
    30004: "The contact's number blocks messages from us",
    30005: "The phone number does not exist or is no longer in service",
    30006: "The phone number is a landline or cannot receive SMS",
    30007: "The carrier filtered the message as spam",
    30008: "The carrier did not deliver the message (unknown error)",
}


def _with_code(text: str, code: int | None) -> str:
    return f"{text} (Twilio error {code})." if code is not None else f"{text}."


def failure_reason(failure: DispatchFailure) -> str:
    """A sentence for the person working the queue, saying what happened and what it means."""
    if failure.kind is FailureKind.UNKNOWN:
        return (
            "Sending this SMS has an unknown outcome: the request to Twilio was interrupted "
            f"({failure.reason}). It was not resent automatically, to avoid a duplicate; check "
            "the conversation before sending it again."
        )
    if failure.kind is FailureKind.UNREACHABLE:
        return f"The SMS was not sent: Twilio could not be reached ({failure.reason}). Try again later."
    explanation = _ERROR_EXPLANATIONS.get(failure.error_code or 0)
    if explanation is not None:
        return _with_code(f"The SMS was not sent: {explanation}", failure.error_code)
    said = (failure.twilio_message or failure.reason).rstrip(".")
    return _with_code(f"Twilio refused the SMS: {said}", failure.error_code)


def delivery_failure_reason(message_status: str, error_code: int | None) -> str:
    """A sentence for an SMS Twilio accepted but reports ``failed``/``undelivered`` later."""
    explanation = _ERROR_EXPLANATIONS.get(error_code or 0)
    if explanation is None:
        explanation = "Twilio could not send it" if message_status == "failed" else "It was not delivered"
    return _with_code(f"The SMS was not delivered: {explanation}", error_code)
