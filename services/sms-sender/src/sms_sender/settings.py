"""sms-sender's configuration: environment variables only (see docs/architecture.md)."""

from __future__ import annotations

from manual_actions.twilio_support import TwilioSettings


class SmsSenderSettings(TwilioSettings):
    service_name: str = "sms-sender"
    http_port: int = 8103
    database_url: str = "postgresql+asyncpg://manual_actions@127.0.0.1:5432/sms_sender"
    consumer_group_id: str = "sms-sender"
