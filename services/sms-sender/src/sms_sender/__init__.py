"""Sends SMS through Twilio exactly once per command and reports the results as events."""
