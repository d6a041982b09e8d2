"""JSON shapes of the HTTP API (requests and responses)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

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
    due_at: datetime | None = Field(description="When it should be worked; null: as soon as possible "
                                                "(ordered as due when queued).")
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

    proposed_message: str | None = Field(
        default=None,
        description="SMS actions: the text to propose, i.e. the step's template rendered with the contact's "
                    "current data (the queued message when there is no template or no current contact data). "
                    "Sent when send-sms or schedule-sms get no edited body.")
    history: list[TransitionView]

    @classmethod
    def of(cls, action: ManualAction) -> ActionDetail:
        history = [{"at": h.at, "from": h.from_status, "to": h.to_status, "by": h.by, "reason": h.reason}
                   for h in action.history]
        proposed = action.proposed_message if action.proposed_message is not None else action.message
        return cls.model_validate({**_fields(action), "history": history, "proposed_message": proposed})


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
        "notes": action.notes, "queued_at": action.queued_at, "due_at": action.due_at,
        "completed_at": action.completed_at,
        "snoozed_until": action.snoozed_until, "send_at": action.send_at,
        "status_reason": action.status_reason, "version": action.version,
    }


class ActionListQuery(BaseModel):
    """The list's query parameters, as one model: FastAPI then validates them in one pydantic call
    instead of analysing each parameter's annotation on every request (measured: about a fifth of
    a list request's CPU)."""

    assignee_user_id: uuid.UUID | None = None
    workflow_id: uuid.UUID | None = None
    contact: str | None = Field(default=None, min_length=1, max_length=100,
                                description="Substring of the contact's name or phone.")
    type: list[ActionType] | None = Field(default=None, description="sms and/or call.")
    status: list[ActionStatus] | None = Field(default=None,
                                              description="Any of these; default: every status but deleted.")
    overdue: bool | None = Field(
        default=None, description="true: the due time passed and the action is still open; false: all "
                                  "others. An action without a due time is never overdue.")
    queued_from: datetime | None = Field(default=None, description="Queued at or after (with offset).")
    queued_to: datetime | None = Field(default=None, description="Queued before (with offset).")
    due_from: datetime | None = Field(
        default=None, description="Due at or after (with offset); no due time: due when queued.")
    due_to: datetime | None = Field(default=None, description="Due before (with offset).")
    sort: str = Field(
        default="queued_at",
        description="priority, due_at or queued_at; a leading - sorts descending. Ties are broken by the "
                    "queue order (due time, queue time, id), so -priority is the Let's Start order: "
                    "priority desc, then due time (none = due when queued), then age.")
    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = Field(default=None, description="next_cursor of the previous page (same sort).")
    counts: bool = Field(default=False, description="Also count every match (all pages), per status "
                                                    "and type. Costs a scan of the matches; leave off "
                                                    "when paging.")


class ListCounts(BaseModel):
    """How many actions match the list's filter (all pages)."""

    total: int = Field(description="Matching the whole filter, statuses included.")
    by_type: dict[ActionType, int] = Field(description="The total split by type.")
    by_status: dict[ActionStatus, int] = Field(
        description="Matching every filter but the statuses, per status (for status tabs).")


class ActionPage(BaseModel):
    items: list[ActionView]
    next_cursor: str | None = Field(description="Pass as ``cursor`` for the next page; null on the last.")
    counts: ListCounts | None = Field(default=None, description="Present when asked for with counts=true.")


class BulkFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    assignee_user_id: uuid.UUID | None = None
    workflow_id: uuid.UUID | None = None
    contact: str | None = Field(default=None, min_length=1, max_length=100)
    type: list[ActionType] = Field(default_factory=list)
    status: list[ActionStatus] = Field(default_factory=list,
                                       description="Default: every status that is not final.")
    overdue: bool | None = Field(default=None, description="Overdue when the request is made (see the list).")
    queued_from: AwareDatetime | None = None
    queued_to: AwareDatetime | None = None
    due_from: AwareDatetime | None = None
    due_to: AwareDatetime | None = None


class BulkRequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._:-]+$",
                            description="Chosen by the client; sending it again returns the same request.")
    operation: Literal["reassign", "delete", "snooze", "reschedule"]
    filter: BulkFilter = Field(default_factory=BulkFilter)
    assignee_user_id: uuid.UUID | None = Field(default=None, description="reassign: the new assignee.")
    until: AwareDatetime | None = Field(
        default=None, description="snooze: until when; reschedule: the new due time (scheduled SMS are "
                                  "sent then instead, other open actions are ordered by it).")
    reason: str | None = Field(default=None, max_length=500)


class BulkRequestView(BaseModel):
    request_id: str
    operation: str
    status: str = Field(description="running or done.")
    matched: int = Field(description="Actions that matched the filter so far.")
    changed: int
    unchanged: int = Field(
        description="Matched but left alone: in use by someone, or unable to take the change.")
    created_at: datetime
    finished_at: datetime | None


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
                         description="How the call went: one of the tenant's call outcomes "
                                     "(GET /v1/settings; by default connected, no_answer, voicemail, busy).")
    notes: str | None = Field(default=None, max_length=4000)


class SkipRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=500, description="Why the action will not be worked.")


class SnoozeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    until: AwareDatetime = Field(description="When to offer the action again (with a UTC offset).")
    reason: str | None = Field(default=None, max_length=500)


class RescheduleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    due_at: datetime | None = Field(
        description="The new due time, with a UTC offset (may lie in the past: then it is overdue); null: "
                    "as soon as possible (due when it was queued). Required: send null to clear it.")
    reason: str | None = Field(default=None, max_length=500)


class ReassignRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    assignee_user_id: uuid.UUID
    reason: str | None = Field(default=None, max_length=500)


class ScheduleSmsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    send_at: datetime = Field(description="When to send: local wall time in ``timezone`` (no offset), or an "
                                          "instant with a UTC offset.")
    timezone: str | None = Field(
        default=None, min_length=1, max_length=64,
        description="Time zone of ``send_at``: \"contact\" (the contact's), \"user\" (yours, from the team "
                    "directory) or an IANA name; default: the contact's time zone when known, else UTC.")
    body: str | None = Field(default=None, min_length=1, max_length=SMS_MAX_LENGTH)


class OutcomeSetting(BaseModel):
    model_config = ConfigDict(extra="forbid")

    slug: str = Field(description="What POST .../complete accepts as outcome: a-z first, then a-z, 0-9, _.")
    label: str = Field(description="What people see.")


class QuietHoursSetting(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: str = Field(description="HH:MM, contact-local; no SMS or call from then...")
    end: str = Field(description="...until HH:MM (wraps midnight when earlier than start).")


class SettingsBody(BaseModel):
    """A tenant's queue settings (all fields; PUT replaces them)."""

    model_config = ConfigDict(extra="forbid")

    outcomes: list[OutcomeSetting] = Field(description="Call outcomes offered and accepted, in order.")
    quiet_hours: QuietHoursSetting
    out_of_office: Literal["redistribute", "hold"] = Field(
        description="redistribute: an out-of-office user's queued actions go round robin to the available "
                    "members of their team; hold: they stay and Let's Start offers the user nothing until "
                    "they are back.")
    away_counts_as_out: bool = Field(default=False, description="Treat availability away like out_of_office.")


class SettingsView(SettingsBody):
    version: int = Field(description="How many times the settings were saved (0: the defaults).")
