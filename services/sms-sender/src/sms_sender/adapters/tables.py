"""sms-sender's tables: one row per SendSms command, every status callback, and the outbox."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Integer, MetaData, Table, Text, Uuid
from sqlalchemy.schema import SchemaItem

from manual_actions.outbox import inbox_table, outbox_table
from manual_actions.twilio_support import callback_schema, outgoing_schema

metadata = MetaData()


def outgoing_sms_columns() -> list[SchemaItem]:
    """sms-sender's own columns of ``outgoing_sms`` (frozen: the first migration uses them)."""
    return [
        Column("to", Text, nullable=False, comment="Recipient, E.164."),
        Column("body", Text, nullable=False),
        Column("requested_by", Uuid, nullable=True),
        Column("error_code", Integer, nullable=True, comment="Twilio error code of the failure, if any."),
        Column("result", Text, nullable=True, comment="Result published: sent, failed or unknown."),
        Column("result_at", DateTime(timezone=True), nullable=True),
    ]


outgoing_sms = Table("outgoing_sms", metadata, *outgoing_schema("outgoing_sms"), *outgoing_sms_columns())
sms_status_callbacks = Table("sms_status_callbacks", metadata, *callback_schema("outgoing_sms"))
outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
