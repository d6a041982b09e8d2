"""JSON shapes of the HTTP API (requests and responses)."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from action_queue.domain import ActionStatus, ManualAction
from action_queue.domain.model import OUTCOME_PATTERN, SMS_MAX_LENGTH
from manual_actions.contracts import ActionType
from manual_actions.contracts.messages import E164


class ContactView(BaseModel):
    id: uuid.UUID
    name: str
    phone: str | None


class TransitionView(BaseModel):
    at: datetime
    from_: ActionStatus | None = Field(alias="from")
    to: ActionStatus
    by: uuid.UUID | None
    reason: str | None


class ActionView(BaseModel):
    """One manual action as the queue shows it."""

    id: uuid.UUID
    tenant: str
    type: ActionType
    action_name: str
    status: ActionStatus
    workflow_id: uuid.UUID
    workflow_name: str
    workflow_version: int
    step_id: str
    enrollment_id: uuid.UUID
    contact: ContactView
    assignee_user_id: uuid.UUID | None
    message: str | None
    priority: int
    reserved_by: uuid.UUID | None
    lease_expires_at: datetime | None
    last_error: str | None = Field(description="Why the last attempt failed (e.g. the SMS was not sent).")
    call_status: str | None = Field(description="Twilio's final status of the last call.")
    outcome: str | None
    notes: str | None
    queued_at: datetime
    completed_at: datetime | None
    snoozed_until: datetime | None = Field(description="Offered again from this time (status snoozed).")
    send_at: datetime | None = Field(description="When the scheduled SMS goes out (status scheduled).")
    status_reason: str | None = Field(
        description="Why the action is in its status: the skip reason (also a blocked check), the snooze "
                    "reason, why it was released, requeued, deleted or failed.")
    version: int = Field(description="Sequence number of the last lifecycle event about this action.")

    @classmethod
    def of(cls, action: ManualAction) -> ActionView:
        return cls.model_validate(_fields(action))


class ActionDetail(ActionView):
    """An action with its history of status changes."""

    history: list[TransitionView]

    @classmethod
    def of(cls, action: ManualAction) -> ActionDetail:
        history = [{"at": h.at, "from": h.from_status, "to": h.to_status, "by": h.by, "reason": h.reason}
                   for h in action.history]
        return cls.model_validate({**_fields(action), "history": history})


def _fields(action: ManualAction) -> dict[str, object]:
    return {
        "id": action.id, "tenant": action.tenant, "type": action.type, "action_name": action.action_name,
        "status": action.status, "workflow_id": action.workflow_id, "workflow_name": action.workflow_name,
        "workflow_version": action.workflow_version, "step_id": action.step_id,
        "enrollment_id": action.enrollment_id,
        "contact": ContactView(id=action.contact.id, name=action.contact.name, phone=action.contact.phone),
        "assignee_user_id": action.assignee_user_id, "message": action.message, "priority": action.priority,
        "reserved_by": action.reserved_by, "lease_expires_at": action.lease_expires_at,
        "last_error": action.last_error, "call_status": action.call_status, "outcome": action.outcome,
        "notes": action.notes, "queued_at": action.queued_at, "completed_at": action.completed_at,
        "snoozed_until": action.snoozed_until, "send_at": action.send_at,
        "status_reason": action.status_reason, "version": action.version,
    }


class ActionPage(BaseModel):
    items: list[ActionView]
    next_cursor: str | None = Field(description="Pass as ``cursor`` for the next page; null on the last.")


class SendSmsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    body: str | None = Field(default=None, min_length=1, max_length=SMS_MAX_LENGTH,
                             description="The edited text; the queued message when absent.")


class PlaceCallRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent_phone: str | None = Field(default=None, pattern=E164,
                                    description="E.164 number rung first, then bridged to the contact.")


class CompleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outcome: str = Field(pattern=OUTCOME_PATTERN.pattern,
                         description="How the call went: connected, no_answer, voicemail, busy...")
    notes: str | None = Field(default=None, max_length=4000)


class SkipRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=500, description="Why the action will not be worked.")


class SnoozeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    until: AwareDatetime = Field(description="When to offer the action again (with a UTC offset).")
    reason: str | None = Field(default=None, max_length=500)


class ReassignRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    assignee_user_id: uuid.UUID
    reason: str | None = Field(default=None, max_length=500)


class ScheduleSmsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    send_at: datetime = Field(description="When to send: local wall time in ``timezone`` (no offset), or an "
                                          "instant with a UTC offset.")
    timezone: str = Field(default="UTC", min_length=1, max_length=64,
                          description="IANA time zone of ``send_at`` (the contact's or the user's).")
    body: str | None = Field(default=None, min_length=1, max_length=SMS_MAX_LENGTH)
