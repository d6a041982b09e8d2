"""The SMS result rules and the reasons shown to people (pure functions, no I/O)."""

from __future__ import annotations

import pytest

from manual_actions.twilio_support import DispatchFailure, FailureKind
from sms_sender.domain.sms import (
    SmsResult,
    delivery_failure_reason,
    failure_reason,
    result_for_failure,
    result_for_status,
)


@pytest.mark.parametrize(
    ("current", "status", "expected"),
    [
        (None, "queued", None),
        (None, "sending", None),
        (None, "sent", SmsResult.SENT),
        (None, "delivered", SmsResult.SENT),
        (SmsResult.SENT, "delivered", None),  # SmsSent only once per command
        (SmsResult.SENT, "sent", None),
        (None, "undelivered", SmsResult.FAILED),
        (None, "failed", SmsResult.FAILED),
        (SmsResult.SENT, "undelivered", None),  # one result per command: the first one stands
        (SmsResult.FAILED, "delivered", None),
        (SmsResult.UNKNOWN, "delivered", SmsResult.SENT),  # a lost request turns out to have gone out
        (SmsResult.UNKNOWN, "failed", None),  # the action is already back in the queue
    ],
)
def test_result_for_status(current: SmsResult | None, status: str, expected: SmsResult | None) -> None:
    assert result_for_status(current, status) == expected


def test_unknown_failures_stay_distinguishable_from_plain_failures() -> None:
    assert result_for_failure(DispatchFailure(FailureKind.UNKNOWN, "x")) is SmsResult.UNKNOWN
    assert result_for_failure(DispatchFailure(FailureKind.REJECTED, "x", 21211)) is SmsResult.FAILED
    assert result_for_failure(DispatchFailure(FailureKind.UNREACHABLE, "x")) is SmsResult.FAILED


def test_invalid_number_reason_is_plain_language_with_the_code() -> None:
    reason = failure_reason(
        DispatchFailure(FailureKind.REJECTED, "HTTP 400 (Twilio error 21211): Unable to create record", 21211)
    )
    assert (
        reason == "The SMS was not sent: The phone number is not a valid phone number (Twilio error 21211)."
    )


def test_not_a_mobile_number_reason() -> None:
    reason = failure_reason(DispatchFailure(FailureKind.REJECTED, "HTTP 400", 21614))
    assert "not a mobile number" in reason and "21614" in reason


def test_unlisted_code_falls_back_to_twilios_message() -> None:
    failure = DispatchFailure(
        FailureKind.REJECTED,
        "HTTP 400 (Twilio error 29999): Unable to create record: Odd.",
        29999,
        twilio_message="Odd.",
    )
    assert failure_reason(failure) == "Twilio refused the SMS: Odd (Twilio error 29999)."


def test_unknown_outcome_reason_says_it_was_not_resent() -> None:
    reason = failure_reason(DispatchFailure(FailureKind.UNKNOWN, "the process stopped"))
    assert "unknown" in reason and "not resent" in reason and "duplicate" in reason


def test_unreachable_reason_says_nothing_was_sent() -> None:
    reason = failure_reason(
        DispatchFailure(FailureKind.UNREACHABLE, "Twilio could not be reached in 5 attempts")
    )
    assert reason.startswith("The SMS was not sent")


def test_delivery_failure_reasons() -> None:
    assert delivery_failure_reason("undelivered", 30006) == (
        "The SMS was not delivered: The phone number is a landline or cannot receive SMS "
        "(Twilio error 30006)."
    )
    assert delivery_failure_reason("failed", None) == "The SMS was not delivered: Twilio could not send it."
