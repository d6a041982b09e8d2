"""outgoing_calls, call_status_callbacks, outbox and inbox.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from dialer.adapters.tables import outgoing_calls_columns
from manual_actions.twilio_support import create_twilio_tables, drop_twilio_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_twilio_tables("outgoing_calls", "call_status_callbacks", outgoing_calls_columns())


def downgrade() -> None:
    drop_twilio_tables("outgoing_calls", "call_status_callbacks")
