"""Event and command contracts: envelope, typed payloads, topics, codec and the schema registry.

``registry`` (topics, schemas, examples, ``validate_envelope``) and ``dead_letters`` (dead-letter
header names) are submodules: import them as ``from manual_actions.contracts import registry``.
"""

from manual_actions.contracts import dead_letters, registry
from manual_actions.contracts.codec import InvalidMessage, decode, decode_document, encode
from manual_actions.contracts.envelope import Envelope, Payload
from manual_actions.contracts.messages import (
    ActionCompleted,
    ActionDeleted,
    ActionQueued,
    ActionType,
    CallCompleted,
    CancelAction,
    ContactSnapshot,
    ContactUpdated,
    PlaceCall,
    SendSms,
    SmsFailed,
    SmsReceived,
    SmsSent,
    UserUpdated,
)
from manual_actions.contracts.upcasting import upcaster

__all__ = [
    "ActionCompleted",
    "ActionDeleted",
    "ActionQueued",
    "ActionType",
    "CallCompleted",
    "CancelAction",
    "ContactSnapshot",
    "ContactUpdated",
    "Envelope",
    "InvalidMessage",
    "Payload",
    "PlaceCall",
    "SendSms",
    "SmsFailed",
    "SmsReceived",
    "SmsSent",
    "UserUpdated",
    "dead_letters",
    "decode",
    "decode_document",
    "encode",
    "registry",
    "upcaster",
]
