"""Metrics of the dialer, each declared once here with what it counts.

Twilio request latency is ``manual_actions_twilio_request_seconds`` (``manual_actions.twilio_support``).
"""

from __future__ import annotations

from prometheus_client import Counter

# Calls Twilio accepted to place (answered with a call sid); the agent's phone is being rung.
CALLS_PLACED = Counter("dialer_calls_placed", "Calls Twilio accepted to place.")

# CallCompleted events staged, by the call status they report (completed, busy, no-answer, failed,
# canceled); "failed" includes calls never placed.
CALLS_COMPLETED = Counter(
    "dialer_calls_completed", "Calls reported completed, by call status.", ["call_status"]
)

# Calls that could not be placed, by why: "rejected" (Twilio refused the request), "unreachable"
# (Twilio never reached), "unknown" (interrupted request, not placed again).
CALLS_NOT_PLACED = Counter("dialer_calls_not_placed", "Calls that could not be placed, by kind.", ["kind"])

# Status callbacks received with a valid signature, by Twilio CallStatus ("other" outside the
# documented set, to keep the label bounded).
STATUS_CALLBACKS = Counter("dialer_status_callbacks", "Twilio call status callbacks received, by status.",
                           ["status"])

# Voice webhooks that asked for the TwiML bridging the agent to the contact.
CONNECTS = Counter("dialer_connects", "TwiML requests that bridged an answered agent to the contact.")

CALL_STATUSES = frozenset({
    "queued", "initiated", "ringing", "in-progress", "completed", "busy", "no-answer", "failed", "canceled",
})
