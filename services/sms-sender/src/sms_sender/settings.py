"""sms-sender's configuration: environment variables only (see docs/architecture.md)."""

from __future__ import annotations

from pydantic import Field

from manual_actions.twilio_support import TwilioSettings


class SmsSenderSettings(TwilioSettings):
    service_name: str = "sms-sender"
    http_port: int = 8103
    database_url: str = "postgresql+asyncpg://manual_actions@127.0.0.1:5432/sms_sender"
    consumer_group_id: str = "sms-sender"

    # Reconciliation of requests whose outcome is unknown (handlers.reconcile, decision 0017).
    reconcile_delay_seconds: float = Field(
        default=30.0,
        ge=0,
        description="Wait before asking Twilio about an unknown outcome (a callback may settle it first).",
    )
    reconcile_poll_interval_seconds: float = Field(default=5.0, gt=0)
    reconcile_max_lookups: int = Field(
        default=3, ge=1, description="Failed lookups (Twilio unreachable) before reporting it unknown anyway."
    )
    reconcile_clock_skew_seconds: float = Field(
        default=120.0, ge=0, description="Margin around a request's time when matching Twilio's messages."
    )
