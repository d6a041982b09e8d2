"""outgoing_sms, sms_status_callbacks, outbox and inbox.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from manual_actions.twilio_support import create_twilio_tables, drop_twilio_tables
from sms_sender.adapters.tables import outgoing_sms_columns

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_twilio_tables("outgoing_sms", "sms_status_callbacks", outgoing_sms_columns())


def downgrade() -> None:
    drop_twilio_tables("outgoing_sms", "sms_status_callbacks")
