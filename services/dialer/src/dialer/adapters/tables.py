"""dialer's tables: one row per PlaceCall command, every status callback, and the outbox."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Integer, MetaData, Table, Text, Uuid
from sqlalchemy.schema import SchemaItem

from manual_actions.outbox import inbox_table, outbox_table
from manual_actions.twilio_support import callback_schema, outgoing_schema

metadata = MetaData()


def outgoing_calls_columns() -> list[SchemaItem]:
    """dialer's own columns of ``outgoing_calls`` (frozen: the first migration uses them)."""
    return [
        Column("to", Text, nullable=False, comment="The contact's number, E.164 (bridged second)."),
        Column("agent_phone", Text, nullable=False, comment="The agent's number, E.164 (rung first)."),
        Column("requested_by", Uuid, nullable=True),
        Column("connected_at", DateTime(timezone=True), nullable=True,
               comment="When the answered agent was bridged to the contact (TwiML served)."),
        Column("duration_seconds", Integer, nullable=True),
        Column("result", Text, nullable=True, comment="What was reported: reported, failed or unknown."),
        Column("result_at", DateTime(timezone=True), nullable=True),
    ]


outgoing_calls = Table(
    "outgoing_calls", metadata, *outgoing_schema("outgoing_calls"), *outgoing_calls_columns()
)
call_status_callbacks = Table("call_status_callbacks", metadata, *callback_schema("outgoing_calls"))
outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
