"""Typed payloads of every event and command on our topics.

Each class is one (type, version) pair of the registry; the JSON Schemas under ``schemas/`` are
generated from these classes and checked in, and a test fails when the two drift apart.
Breaking changes get a new class with ``message_version`` + 1, never an edit of an old one.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import Field

from manual_actions.contracts.envelope import Payload
from manual_actions.contracts.upcasting import upcaster

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
    """A workflow step queued a manual action for a person.

    Version 2 adds ``due_at`` (when the action should be worked; queues order by priority, then due
    time, then age) and ``message_template`` (the SMS step's template, so the queue can render the
    text again from the contact's current data at the moment of work).
    """

    message_type: ClassVar[str] = "ActionQueued"
    message_version: ClassVar[int] = 2
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
    message_template: str | None = Field(
        default=None,
        description=(
            "The step's SMS template with {{merge.fields}} (SMS actions only); rendered again with the "
            "contact's current data when a person starts the action."
        ),
    )
    notes: str | None = Field(default=None, description="Script or notes for the person (call actions).")
    priority: int = Field(default=0, ge=0, le=100, description="Higher is worked first.")
    queued_at: datetime
    due_at: datetime | None = Field(
        default=None, description="When it should be worked; null means as soon as possible."
    )
    expires_at: datetime | None = Field(
        default=None, description="If nobody worked the action by then, it expires (ActionExpired)."
    )


class ActionQueuedV1(Payload):
    """Version 1 of ActionQueued (no due time, no message template); upcast to version 2."""

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
    expires_at: datetime | None = Field(
        default=None, description="If nobody worked the action by then, it expires (ActionExpired)."
    )


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


# Every further transition of an action, published by action-queue with the next sequence number
# after ActionQueued (1). Each carries the action's id, type and assignee *after* the transition, so
# a consumer that only counts (the dashboard) needs no other state, and everything the transition
# changed, so a fresh consumer can rebuild each action exactly as action-queue holds it.


class ActionReserved(Payload):
    """A person took the action to work on it (Let's Start), or renewed that reservation.

    The reservation lapses at ``lease_expires_at`` unless renewed again (``renewed`` true).
    """

    message_type: ClassVar[str] = "ActionReserved"
    action_id: uuid.UUID
    action_type: ActionType
    assignee_user_id: uuid.UUID | None
    reserved_by: uuid.UUID
    lease_expires_at: datetime
    renewed: bool = Field(default=False, description="True when an existing reservation was extended.")
    reserved_at: datetime


class ActionReleased(Payload):
    """A reservation ended without the work being done; the action is queued again.

    ``reason`` is ``lease_lapsed`` (nobody renewed it in time) or ``given_back`` (the person let it go).
    """

    message_type: ClassVar[str] = "ActionReleased"
    action_id: uuid.UUID
    action_type: ActionType
    assignee_user_id: uuid.UUID | None
    reason: str = Field(description="lease_lapsed or given_back.")
    released_by: uuid.UUID | None = Field(description="Who gave it back; null when the lease lapsed.")
    released_at: datetime


class ActionSnoozed(Payload):
    """The action is put aside until ``until``; it is offered again from then on."""

    message_type: ClassVar[str] = "ActionSnoozed"
    action_id: uuid.UUID
    action_type: ActionType
    assignee_user_id: uuid.UUID | None
    until: datetime
    reason: str | None = None
    snoozed_by: uuid.UUID | None
    snoozed_at: datetime


class ActionScheduled(Payload):
    """An SMS action will be sent at ``send_at`` (chosen in ``timezone``) with ``body``."""

    message_type: ClassVar[str] = "ActionScheduled"
    action_id: uuid.UUID
    action_type: ActionType
    assignee_user_id: uuid.UUID | None
    send_at: datetime
    timezone: str = Field(description="IANA time zone the person chose the time in.")
    body: str = Field(min_length=1, max_length=1600)
    scheduled_by: uuid.UUID | None
    scheduled_at: datetime


class ActionRescheduled(Payload):
    """A person changed when the action should be worked (its due time); the queue order follows."""

    message_type: ClassVar[str] = "ActionRescheduled"
    action_id: uuid.UUID
    action_type: ActionType
    assignee_user_id: uuid.UUID | None
    due_at: datetime | None = Field(description="The new due time; null means as soon as possible.")
    previous_due_at: datetime | None
    reason: str | None = None
    rescheduled_by: uuid.UUID | None
    rescheduled_at: datetime


class ActionRequeued(Payload):
    """The action is queued again by the system: a snooze ended, a scheduled SMS was cancelled, or
    sending failed (then ``last_error`` holds the reason shown to the person)."""

    message_type: ClassVar[str] = "ActionRequeued"
    action_id: uuid.UUID
    action_type: ActionType
    assignee_user_id: uuid.UUID | None
    reason: str = Field(min_length=1)
    last_error: str | None = None
    requeued_by: uuid.UUID | None = None
    requeued_at: datetime


class ActionSmsRequested(Payload):
    """The SMS (``body``, possibly edited) was handed to the sender as command ``command_id``."""

    message_type: ClassVar[str] = "ActionSmsRequested"
    action_id: uuid.UUID
    action_type: ActionType
    assignee_user_id: uuid.UUID | None
    command_id: uuid.UUID
    body: str = Field(min_length=1, max_length=1600)
    requested_by: uuid.UUID | None
    requested_at: datetime


class ActionCallRequested(Payload):
    """The call was handed to the dialer as command ``command_id``: it rings ``agent_phone`` first."""

    message_type: ClassVar[str] = "ActionCallRequested"
    action_id: uuid.UUID
    action_type: ActionType
    assignee_user_id: uuid.UUID | None
    command_id: uuid.UUID
    agent_phone: str = Field(pattern=E164)
    requested_by: uuid.UUID | None
    requested_at: datetime


class ActionCallEnded(Payload):
    """The call ended with Twilio's final ``call_status``; the person now records the outcome."""

    message_type: ClassVar[str] = "ActionCallEnded"
    action_id: uuid.UUID
    action_type: ActionType
    assignee_user_id: uuid.UUID | None
    command_id: uuid.UUID
    call_status: str
    duration_seconds: int = Field(default=0, ge=0)
    ended_at: datetime


class ActionSkipped(Payload):
    """The action will not be worked; ``reason`` says why. ``skipped_by`` is null when a check at the
    moment of work (opt-out, do-not-disturb, invalid number, quiet hours) blocked it."""

    message_type: ClassVar[str] = "ActionSkipped"
    action_id: uuid.UUID
    action_type: ActionType
    assignee_user_id: uuid.UUID | None
    reason: str = Field(min_length=1)
    skipped_by: uuid.UUID | None
    skipped_at: datetime


class ActionReassigned(Payload):
    """The action moved from one person's queue to another's; a reservation on it was dropped."""

    message_type: ClassVar[str] = "ActionReassigned"
    action_id: uuid.UUID
    action_type: ActionType
    assignee_user_id: uuid.UUID | None = Field(description="The new assignee.")
    previous_assignee_user_id: uuid.UUID | None
    reassigned_by: uuid.UUID | None
    reason: str | None = None
    reassigned_at: datetime


class ActionExpired(Payload):
    """Nobody worked the action before its expiry time; it left the queue."""

    message_type: ClassVar[str] = "ActionExpired"
    action_id: uuid.UUID
    action_type: ActionType
    assignee_user_id: uuid.UUID | None
    expired_at: datetime


class ActionFailed(Payload):
    """The action cannot be done: its SMS failed on every allowed attempt (three); it left the queue."""

    message_type: ClassVar[str] = "ActionFailed"
    action_id: uuid.UUID
    action_type: ActionType
    assignee_user_id: uuid.UUID | None
    reason: str = Field(min_length=1)
    error_code: int | None = Field(default=None, description="Twilio error code, when Twilio gave one.")
    failed_at: datetime


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


# --- directory events (topics manual-actions.contacts and manual-actions.users) ----------------


class ChannelFlags(Payload):
    """One yes/no per channel of manual actions."""

    message_type: ClassVar[str] = "ChannelFlags"
    sms: bool = False
    call: bool = False


class Availability(Payload):
    """Whether a user takes work: ``available``, or ``away``/``out_of_office`` between the optional
    dates (an open end means "until changed")."""

    message_type: ClassVar[str] = "Availability"
    status: str = Field(description="available, away or out_of_office.")
    unavailable_from: datetime | None = None
    unavailable_until: datetime | None = None


class WorkingInterval(Payload):
    """A working period of one weekday, local time of the user's time zone (``HH:MM``)."""

    message_type: ClassVar[str] = "WorkingInterval"
    start: str = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    end: str = Field(pattern=r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$")


class ContactUpdated(Payload):
    """The current state of a contact, after it was created, changed, assigned or deleted.

    The latest message per contact (the topic is compacted) is all a consumer needs: opt-out and
    do-not-disturb per channel decide whether an SMS or call may still be sent. Version 2 adds
    ``email`` and ``custom_fields``, so SMS texts can be rendered from current contact data.
    """

    message_type: ClassVar[str] = "ContactUpdated"
    message_version: ClassVar[int] = 2
    contact_id: uuid.UUID
    name: str
    phone: str | None = Field(default=None, pattern=E164)
    email: str | None = None
    timezone: str | None = Field(default=None, description="IANA time zone name.")
    custom_fields: dict[str, str | bool | int | float | None] = Field(
        default_factory=dict, description="The tenant's own fields (merge fields `contact.custom.<name>`)."
    )
    opted_out: ChannelFlags = Field(description="The contact asked not to be reached on this channel.")
    do_not_disturb: ChannelFlags = Field(description="A person paused this channel for the contact.")
    tags: list[str] = Field(default_factory=list)
    owner_user_id: uuid.UUID | None = None
    deleted: bool = Field(default=False, description="True once the contact was deleted.")
    updated_at: datetime


class ContactUpdatedV1(Payload):
    """Version 1 of ContactUpdated (no email, no custom fields); upcast to version 2."""

    message_type: ClassVar[str] = "ContactUpdated"
    contact_id: uuid.UUID
    name: str
    phone: str | None = Field(default=None, pattern=E164)
    timezone: str | None = Field(default=None, description="IANA time zone name.")
    opted_out: ChannelFlags = Field(description="The contact asked not to be reached on this channel.")
    do_not_disturb: ChannelFlags = Field(description="A person paused this channel for the contact.")
    tags: list[str] = Field(default_factory=list)
    owner_user_id: uuid.UUID | None = None
    deleted: bool = Field(default=False, description="True once the contact was deleted.")
    updated_at: datetime


class UserUpdated(Payload):
    """The current state of a user (team member), after it was created, changed or deleted."""

    message_type: ClassVar[str] = "UserUpdated"
    user_id: uuid.UUID
    name: str
    phone: str = Field(pattern=E164)
    role: str = Field(description="admin, manager or agent.")
    team_id: uuid.UUID | None = None
    timezone: str = Field(description="IANA time zone of the working hours.")
    availability: Availability
    working_hours: dict[str, list[WorkingInterval]] | None = Field(
        default=None,
        description="Weekday (mon..sun) -> intervals; null means no working-hours limit.",
    )
    deleted: bool = False
    updated_at: datetime


# --- commands to action-queue (topic manual-actions.action-commands) ----------------------------


class CancelAction(Payload):
    """Remove a manual action that is no longer wanted (its enrollment stopped, or its step timed
    out with "cancel the action"). action-queue deletes it (ActionDeleted with ``reason``) unless
    it already finished or an SMS or call for it is under way; then the command has no effect."""

    message_type: ClassVar[str] = "CancelAction"
    kind: ClassVar[str] = "command"
    command_id: uuid.UUID
    action_id: uuid.UUID
    enrollment_id: uuid.UUID
    reason: str = Field(min_length=1, max_length=200)
    requested_at: datetime


# --- inbound SMS (topic manual-actions.sms-inbound) --------------------------------------------


class SmsReceived(Payload):
    """A contact sent an SMS to one of the tenant's numbers (Twilio's signed incoming-message
    webhook). ``keyword`` is set when the whole text is a carrier keyword: ``opt_out`` (STOP,
    UNSUBSCRIBE, ...), ``opt_in`` (START, UNSTOP, ...) or ``help``; consumers act on it."""

    message_type: ClassVar[str] = "SmsReceived"
    message_sid: str = Field(pattern=r"^(SM|MM)[0-9a-fA-F]{32}$")
    from_phone: str = Field(pattern=E164, description="The contact's number.")
    to_phone: str = Field(pattern=E164, description="The tenant's number that received it.")
    body: str = Field(max_length=1600)
    keyword: str | None = Field(default=None, description="opt_out, opt_in, help, or null.")
    received_at: datetime


ALL_MESSAGES: tuple[type[Payload], ...] = (
    ActionQueuedV1,
    ActionQueued,
    ActionCompleted,
    ActionDeleted,
    ActionReserved,
    ActionReleased,
    ActionSnoozed,
    ActionScheduled,
    ActionRequeued,
    ActionRescheduled,
    ActionSmsRequested,
    ActionCallRequested,
    ActionCallEnded,
    ActionSkipped,
    ActionReassigned,
    ActionExpired,
    ActionFailed,
    SendSms,
    PlaceCall,
    SmsSent,
    SmsFailed,
    CallCompleted,
    ContactUpdatedV1,
    ContactUpdated,
    UserUpdated,
    CancelAction,
    SmsReceived,
)


# --- upcasters (see upcasting.py) --------------------------------------------------------------


@upcaster("ActionQueued", from_version=1)
def _action_queued_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "message_template": None, "due_at": None}


@upcaster("ContactUpdated", from_version=1)
def _contact_updated_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "email": None, "custom_fields": {}}
