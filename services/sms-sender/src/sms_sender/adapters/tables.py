"""sms-sender's tables: one row per SendSms command, every status callback, every SMS contacts sent
us (with the per-sender sequence of their events), and the outbox."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    Uuid,
    func,
    text,
)
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


outgoing_sms = Table(
    "outgoing_sms",
    metadata,
    *outgoing_schema("outgoing_sms"),
    *outgoing_sms_columns(),
    # Migration 0003: a request with an unknown outcome is looked up at Twilio before it is
    # reported (handlers.reconcile); due at reconcile_at, null once settled.
    Column("reconcile_at", DateTime(timezone=True), nullable=True, comment="When to look it up at Twilio."),
    Column("reconcile_lookups", Integer, nullable=False, server_default="0"),
    Index("ix_outgoing_sms_reconcile_due", "reconcile_at", postgresql_where=text("reconcile_at IS NOT NULL")),
)
sms_status_callbacks = Table("sms_status_callbacks", metadata, *callback_schema("outgoing_sms"))

# One row per incoming message Twilio delivered to our webhook (migration 0002). The primary key is
# Twilio's MessageSid: a webhook Twilio repeats inserts nothing and publishes nothing again.
incoming_sms = Table(
    "incoming_sms",
    metadata,
    Column("message_sid", Text, primary_key=True, comment="Twilio's MessageSid (SM... or MM...)."),
    Column("tenant_id", Text, nullable=False),
    Column("account_sid", Text, nullable=True, comment="Twilio account that received it."),
    Column("from_phone", Text, nullable=False, comment="The contact's number, E.164."),
    Column("to_phone", Text, nullable=False, comment="Our number that received it, E.164."),
    Column("body", Text, nullable=False, comment="The text as received (personal data: never logged)."),
    Column("keyword", Text, nullable=True, comment="opt_out, opt_in, help, or null."),
    Column("sequence", BigInteger, nullable=False, comment="Envelope sequence of its SmsReceived."),
    Column("event_id", Uuid, nullable=False, comment="Envelope id of its SmsReceived."),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(
        "keyword IS NULL OR keyword IN ('opt_out', 'opt_in', 'help')", name="ck_incoming_sms_keyword"
    ),
    Index("ix_incoming_sms_tenant_from", "tenant_id", "from_phone", "received_at"),
)

# The last SmsReceived sequence per subject (the sender's number): bumped by an upsert that locks
# the row until the message's transaction commits, so one sender's events get 1, 2, 3... in the
# order they are committed, and so are published (the outbox relay publishes in commit order).
inbound_sequences = Table(
    "inbound_sequences",
    metadata,
    Column("subject", Text, primary_key=True, comment="SmsReceived subject: from_phone."),
    Column("last_sequence", BigInteger, nullable=False),
)

outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
