"""When a call's result is reported. Plain rules, no I/O.

A call is reported once, by CallCompleted, when Twilio's status callback gives a final status.
A call that never got a sid is reported as ``failed`` at once (Twilio refused it, or could not be
reached, or the request's outcome is unknown and it was not placed again). The only second
report is the real final status after such an "unknown" report, when Twilio's callback shows the
call did happen (the callback carries our command id).
"""

from __future__ import annotations

from enum import StrEnum

# Twilio CallStatus values after which nothing more happens to the call.
FINAL_CALL_STATUSES = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})

# The CallCompleted status of a call that was never placed (or whose placing is unknown).
NOT_PLACED_STATUS = "failed"


class CallResult(StrEnum):
    """What this service has reported for a command (nothing yet: ``None``)."""

    REPORTED = "reported"  # CallCompleted with Twilio's final status
    FAILED = "failed"  # CallCompleted(failed): Twilio refused or was unreachable; no call exists
    UNKNOWN = "unknown"  # CallCompleted(failed) for an interrupted request; may still be corrected


def should_report(current: CallResult | None, call_status: str) -> bool:
    """Whether a status callback with ``call_status`` publishes CallCompleted now."""
    return call_status in FINAL_CALL_STATUSES and current in (None, CallResult.UNKNOWN)


def duration_seconds(raw: str | None) -> int:
    """Twilio's ``CallDuration`` (whole seconds; absent before the call ends) as an int >= 0."""
    return int(raw) if raw and raw.isdigit() else 0
