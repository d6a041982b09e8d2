"""Places calls through Twilio Voice and reports their results as events."""
