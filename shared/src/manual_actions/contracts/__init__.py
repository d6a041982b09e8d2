"""Event and command contracts: envelope, typed payloads, topics, codec and the schema registry."""

from manual_actions.contracts.codec import InvalidMessage, decode, encode
from manual_actions.contracts.envelope import Envelope, Payload
from manual_actions.contracts.messages import (
    ActionCompleted,
    ActionDeleted,
    ActionQueued,
    ActionType,
    CallCompleted,
    ContactSnapshot,
    PlaceCall,
    SendSms,
    SmsFailed,
    SmsSent,
)

__all__ = [
    "ActionCompleted",
    "ActionDeleted",
    "ActionQueued",
    "ActionType",
    "CallCompleted",
    "ContactSnapshot",
    "Envelope",
    "InvalidMessage",
    "Payload",
    "PlaceCall",
    "SendSms",
    "SmsFailed",
    "SmsSent",
    "decode",
    "encode",
]
