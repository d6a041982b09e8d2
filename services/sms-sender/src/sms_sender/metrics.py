"""Metrics of sms-sender, each declared once here with what it counts.

Twilio request latency is ``manual_actions_twilio_request_seconds`` (``manual_actions.twilio_support``).
"""

from __future__ import annotations

from prometheus_client import Counter

# SendSms requests Twilio accepted (answered with a message sid). Not yet "sent": see SMS_SENT.
SMS_ACCEPTED = Counter("sms_sender_sms_accepted", "SMS requests Twilio accepted.")

# SmsSent events staged: Twilio reported an SMS sent or delivered (once per command).
SMS_SENT = Counter("sms_sender_sms_sent", "SMS reported sent (SmsSent published).")

# SmsFailed events staged, by why: "rejected" (Twilio refused the request), "unreachable" (Twilio
# never reached; nothing sent), "unknown" (interrupted request, not resent), "undelivered"
# (accepted, then reported failed/undelivered by a status callback).
SMS_FAILED = Counter("sms_sender_sms_failed", "SMS reported failed (SmsFailed published), by kind.", ["kind"])

# Status callbacks received with a valid signature, by Twilio MessageStatus ("other" for a value
# outside Twilio's documented set, to keep the label bounded).
STATUS_CALLBACKS = Counter(
    "sms_sender_status_callbacks", "Twilio message status callbacks received, by status.", ["status"]
)

MESSAGE_STATUSES = frozenset({
    "queued", "sending", "sent", "delivered", "undelivered", "failed", "accepted", "scheduled",
    "canceled", "read", "receiving", "received", "partially_delivered",
})

# SMS contacts sent us, stored and published as SmsReceived (each MessageSid once), by keyword:
# opt_out, opt_in, help, or none (an ordinary reply). A jump of opt_out after a campaign is the
# signal to look at its wording.
SMS_INBOUND = Counter(
    "sms_inbound", "SMS received from contacts (SmsReceived published), by keyword.", ["keyword"]
)

# Incoming-message webhooks Twilio repeated for a MessageSid already stored: answered, nothing
# published. A steady rate means our answers reach Twilio too late (it retries on timeouts).
SMS_INBOUND_DUPLICATES = Counter(
    "sms_sender_inbound_duplicates", "Incoming-message webhooks repeated for a stored MessageSid."
)

# Incoming-message webhooks refused before anything was stored, by reason: unknown_tenant (404)
# or invalid_field (400). Signature failures are manual_actions_twilio_signature_rejections.
SMS_INBOUND_REFUSED = Counter(
    "sms_sender_inbound_refused", "Incoming-message webhooks refused, by reason.", ["reason"]
)

# Requests with an unknown outcome looked up at Twilio before being reported (decision 0017), by
# how each step ended: started (deferred for lookup), found_sent / found_failed / found_pending
# (Twilio has the SMS), not_found (reported unknown: Twilio shows no such SMS), lookup_failed
# (Twilio could not be asked; retried), gave_up (reported unknown after RECONCILE_MAX_LOOKUPS
# failed lookups), callback (a status callback settled it first).
SMS_RECONCILIATIONS = Counter(
    "sms_sender_reconciliations", "Unknown SMS outcomes looked up at Twilio, by result.", ["result"]
)
