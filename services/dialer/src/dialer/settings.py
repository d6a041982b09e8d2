"""dialer's configuration: environment variables only (see docs/architecture.md)."""

from __future__ import annotations

from manual_actions.twilio_support import TwilioSettings


class DialerSettings(TwilioSettings):
    service_name: str = "dialer"
    http_port: int = 8104
    database_url: str = "postgresql+asyncpg://manual_actions@127.0.0.1:5432/dialer"
    consumer_group_id: str = "dialer"
