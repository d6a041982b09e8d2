"""Typed payloads of every event and command on our topics.

Each class is one (type, version) pair of the registry; the JSON Schemas under ``schemas/`` are
generated from these classes and checked in, and a test fails when the two drift apart.
Breaking changes get a new class with ``message_version`` + 1, never an edit of an old one.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from pydantic import Field

from manual_actions.contracts.envelope import Payload

E164 = r"^\+[1-9][0-9]{6,14}$"


class ActionType(StrEnum):
    SMS = "sms"
    CALL = "call"


class ContactSnapshot(Payload):
    """The contact as it was when the action was queued."""

    message_type: ClassVar[str] = "ContactSnapshot"
    contact_id: uuid.UUID
    name: str
    phone: str | None = Field(
        default=None, pattern=E164, description="E.164 phone number, if the contact has a valid one."
    )


# --- action lifecycle events (topic manual-actions.action-lifecycle) ---------------------------


class ActionQueued(Payload):
    """A workflow step queued a manual action for a person."""

    message_type: ClassVar[str] = "ActionQueued"
    action_id: uuid.UUID
    action_type: ActionType
    action_name: str = Field(description="Internal action name set on the workflow step.")
    workflow_id: uuid.UUID
    workflow_version: int = Field(ge=1)
    workflow_name: str
    step_id: str
    enrollment_id: uuid.UUID
    contact: ContactSnapshot
    assignee_user_id: uuid.UUID | None = Field(
        description="Who must work it; null when nobody could be assigned."
    )
    message: str | None = Field(default=None, description="Rendered SMS text (SMS actions only).")
    notes: str | None = Field(default=None, description="Script or notes for the person (call actions).")
    priority: int = Field(default=0, ge=0, le=100)
    queued_at: datetime


class ActionCompleted(Payload):
    """A person completed a manual action; ``outcome`` says how it went."""

    message_type: ClassVar[str] = "ActionCompleted"
    action_id: uuid.UUID
    action_type: ActionType
    enrollment_id: uuid.UUID
    step_id: str
    assignee_user_id: uuid.UUID | None
    outcome: str = Field(
        min_length=1, description="sent for SMS; connected, no_answer, voicemail, busy... for calls."
    )
    notes: str | None = None
    completed_by: uuid.UUID | None = Field(description="User who completed it; null when the system did.")
    completed_at: datetime


class ActionDeleted(Payload):
    """A manual action was removed from the queue (the trash icon) before completion."""

    message_type: ClassVar[str] = "ActionDeleted"
    action_id: uuid.UUID
    action_type: ActionType
    enrollment_id: uuid.UUID
    step_id: str
    assignee_user_id: uuid.UUID | None
    deleted_by: uuid.UUID | None
    reason: str | None = None
    deleted_at: datetime


# --- commands to the Twilio-facing services ----------------------------------------------------


class SendSms(Payload):
    """Send this SMS once. The sender must never send the same command_id twice."""

    message_type: ClassVar[str] = "SendSms"
    kind: ClassVar[str] = "command"
    command_id: uuid.UUID
    action_id: uuid.UUID
    to: str = Field(pattern=E164)
    body: str = Field(min_length=1, max_length=1600)
    requested_by: uuid.UUID | None


class PlaceCall(Payload):
    """Ring the agent, then bridge them to the contact."""

    message_type: ClassVar[str] = "PlaceCall"
    kind: ClassVar[str] = "command"
    command_id: uuid.UUID
    action_id: uuid.UUID
    to: str = Field(pattern=E164, description="The contact's number.")
    agent_phone: str = Field(pattern=E164, description="The agent's number, rung first.")
    requested_by: uuid.UUID | None


# --- results from the Twilio-facing services ---------------------------------------------------


class SmsSent(Payload):
    """Twilio reported the SMS sent or delivered."""

    message_type: ClassVar[str] = "SmsSent"
    command_id: uuid.UUID
    action_id: uuid.UUID
    message_sid: str = Field(pattern=r"^(SM|MM)[0-9a-fA-F]{32}$")
    to: str = Field(pattern=E164)
    delivery_status: str = Field(description="Twilio MessageStatus: sent or delivered.")
    sent_at: datetime


class SmsFailed(Payload):
    """The SMS could not be sent; ``reason`` is meant for the person working the queue."""

    message_type: ClassVar[str] = "SmsFailed"
    command_id: uuid.UUID
    action_id: uuid.UUID
    message_sid: str | None = None
    reason: str = Field(min_length=1)
    error_code: int | None = Field(default=None, description="Twilio error code, when Twilio gave one.")
    failed_at: datetime


class CallCompleted(Payload):
    """The call ended; ``call_status`` is Twilio's final CallStatus."""

    message_type: ClassVar[str] = "CallCompleted"
    command_id: uuid.UUID
    action_id: uuid.UUID
    call_sid: str | None = Field(default=None, pattern=r"^CA[0-9a-fA-F]{32}$")
    call_status: str = Field(description="completed, busy, no-answer, failed or canceled.")
    duration_seconds: int = Field(default=0, ge=0)
    ended_at: datetime


ALL_MESSAGES: tuple[type[Payload], ...] = (
    ActionQueued,
    ActionCompleted,
    ActionDeleted,
    SendSms,
    PlaceCall,
    SmsSent,
    SmsFailed,
    CallCompleted,
)
