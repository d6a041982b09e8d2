"""Topic names. The registry (``topics/*.yaml``) holds each topic's key, partitions and owners."""

ACTION_LIFECYCLE = "manual-actions.action-lifecycle"
SMS_COMMANDS = "manual-actions.sms-commands"
CALL_COMMANDS = "manual-actions.call-commands"
SMS_RESULTS = "manual-actions.sms-results"
CALL_RESULTS = "manual-actions.call-results"
DEAD_LETTERS = "manual-actions.dead-letters"
