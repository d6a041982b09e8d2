"""The manual action and its life cycle. Plain Python: no I/O, the clock is passed in.

Each transition method checks the current status, changes the action, appends to ``history`` and
returns what must be published because of it (a contract payload) or ``None``:

* lifecycle events (ActionCompleted, ActionDeleted) advance ``version`` by one; ``version`` is the
  sequence number of the last lifecycle event about this action (ActionQueued from
  workflow-runner is sequence 1), so the caller publishes the returned event with
  ``sequence = version`` after the call;
* commands (SendSms, PlaceCall) advance ``command_sequence`` instead, so retrying a send never
  shifts the lifecycle numbering other services rely on.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from action_queue.domain.errors import (
    InvalidField,
    InvalidTransition,
    NotAllowed,
    ReservedByAnother,
    StaleResult,
)
from manual_actions.contracts import (
    ActionCompleted,
    ActionDeleted,
    ActionQueued,
    ActionType,
    PlaceCall,
    SendSms,
)
from manual_actions.contracts.messages import E164

DEFAULT_LEASE = timedelta(minutes=5)
SMS_MAX_LENGTH = 1600
SMS_OUTCOME = "sent"
OUTCOME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_E164 = re.compile(E164)


class ActionStatus(StrEnum):
    QUEUED = "queued"
    RESERVED = "reserved"
    SENDING = "sending"
    CALLING = "calling"
    AWAITING_OUTCOME = "awaiting_outcome"
    COMPLETED = "completed"
    DELETED = "deleted"


TERMINAL = frozenset({ActionStatus.COMPLETED, ActionStatus.DELETED})
WORKABLE = frozenset({ActionStatus.QUEUED, ActionStatus.RESERVED})


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Contact:
    """The contact as it was when the action was queued."""

    id: uuid.UUID
    name: str
    phone: str | None


@dataclass(frozen=True)
class Transition:
    """One entry of an action's history. ``by`` is None when the system made the change."""

    at: datetime
    from_status: ActionStatus | None
    to_status: ActionStatus
    by: uuid.UUID | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Actor:
    """Who asks for a change: their tenant, user id (None for service tokens) and whether they
    supervise the whole tenant (managers and admins) or only their own actions (agents)."""

    tenant: str
    user_id: uuid.UUID | None
    supervisor: bool

    def can_access(self, action: ManualAction) -> bool:
        """Agents see and act on the actions assigned to them; supervisors on all of their tenant's."""
        if action.tenant != self.tenant:
            return False
        return self.supervisor or (self.user_id is not None and action.assignee_user_id == self.user_id)


@dataclass
class ManualAction:
    id: uuid.UUID
    tenant: str
    type: ActionType
    action_name: str
    workflow_id: uuid.UUID
    workflow_name: str
    workflow_version: int
    step_id: str
    enrollment_id: uuid.UUID
    contact: Contact
    assignee_user_id: uuid.UUID | None
    message: str | None
    priority: int
    status: ActionStatus
    queued_at: datetime
    version: int
    reserved_by: uuid.UUID | None = None
    lease_expires_at: datetime | None = None
    last_error: str | None = None
    call_status: str | None = None
    outcome: str | None = None
    notes: str | None = None
    completed_at: datetime | None = None
    pending_command_id: uuid.UUID | None = None
    command_sequence: int = 0
    history: list[Transition] = field(default_factory=list)

    # --- creation --------------------------------------------------------------------------------

    @classmethod
    def from_queued(cls, tenant: str, event: ActionQueued, sequence: int) -> ManualAction:
        """The action as an ActionQueued (with envelope ``sequence``) describes it."""
        return cls(
            id=event.action_id,
            tenant=tenant,
            type=event.action_type,
            action_name=event.action_name,
            workflow_id=event.workflow_id,
            workflow_name=event.workflow_name,
            workflow_version=event.workflow_version,
            step_id=event.step_id,
            enrollment_id=event.enrollment_id,
            contact=Contact(id=event.contact.contact_id, name=event.contact.name, phone=event.contact.phone),
            assignee_user_id=event.assignee_user_id,
            message=event.message,
            priority=event.priority,
            status=ActionStatus.QUEUED,
            queued_at=event.queued_at,
            version=sequence,
            history=[Transition(at=event.queued_at, from_status=None, to_status=ActionStatus.QUEUED,
                                reason=f"queued by workflow step {event.step_id}")],
        )

    # --- queries ---------------------------------------------------------------------------------

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    def lease_active(self, now: datetime) -> bool:
        return (self.status is ActionStatus.RESERVED and self.lease_expires_at is not None
                and self.lease_expires_at > now)

    def is_reservable(self, now: datetime) -> bool:
        """Queued, or reserved with a lease that has lapsed."""
        return self.status is ActionStatus.QUEUED or (
            self.status is ActionStatus.RESERVED and not self.lease_active(now))

    # --- transitions started by people -----------------------------------------------------------

    def reserve(self, user_id: uuid.UUID, now: datetime, lease: timedelta = DEFAULT_LEASE) -> None:
        """Reserve the action to ``user_id`` until ``now + lease`` (Let's Start). No event."""
        if not self.is_reservable(now):
            if self.lease_active(now):
                raise ReservedByAnother(self.id, self.reserved_by)
            raise InvalidTransition(self.id, self.status, "reserve")
        self._move(ActionStatus.RESERVED, now, by=user_id, reason="reserved")
        self.reserved_by = user_id
        self.lease_expires_at = now + lease

    def send_sms(self, by: uuid.UUID | None, command_id: uuid.UUID, *, body: str | None = None,
                 now: datetime | None = None) -> SendSms:
        """Hand the SMS (``body`` if the person edited it, else the queued message) to the sender.

        Status becomes ``sending`` until SmsSent or SmsFailed arrives.
        """
        now = now or utcnow()
        self._require_type(ActionType.SMS, "send an SMS for")
        self._require_workable(by, now, "send an SMS for")
        to = self._contact_phone()
        text = (body if body is not None else self.message or "").strip()
        if not text:
            raise InvalidField("body", "the SMS has no text: the action has no message and no body was given")
        if len(text) > SMS_MAX_LENGTH:
            raise InvalidField("body", f"an SMS may hold at most {SMS_MAX_LENGTH} characters, "
                                       f"got {len(text)}")
        self._move(ActionStatus.SENDING, now, by=by, reason="SMS handed to the sender")
        self.message = text
        self.last_error = None
        self.pending_command_id = command_id
        self.command_sequence += 1
        return SendSms(command_id=command_id, action_id=self.id, to=to, body=text, requested_by=by)

    def place_call(self, by: uuid.UUID | None, command_id: uuid.UUID, *, agent_phone: str | None,
                   now: datetime | None = None) -> PlaceCall:
        """Ask the dialer to ring ``agent_phone`` and bridge to the contact; status becomes ``calling``."""
        now = now or utcnow()
        self._require_type(ActionType.CALL, "place a call for")
        self._require_workable(by, now, "place a call for")
        to = self._contact_phone()
        if not agent_phone:
            raise InvalidField("agent_phone", "agent_phone is required: no phone is known for the assignee")
        if not _E164.match(agent_phone):
            raise InvalidField("agent_phone", "agent_phone must be an E.164 number such as +14155550100")
        self._move(ActionStatus.CALLING, now, by=by, reason="call handed to the dialer")
        self.last_error = None
        self.call_status = None
        self.pending_command_id = command_id
        self.command_sequence += 1
        return PlaceCall(command_id=command_id, action_id=self.id, to=to, agent_phone=agent_phone,
                         requested_by=by)

    def complete(self, outcome: str, by: uuid.UUID | None, *, notes: str | None = None,
                 now: datetime | None = None) -> ActionCompleted:
        """Record how a call went. Calls only, while ``calling`` or ``awaiting_outcome``; SMS actions
        complete when the sender reports the SMS sent."""
        now = now or utcnow()
        if self.type is ActionType.SMS:
            raise InvalidTransition(self.id, self.status, "complete",
                                    f"SMS action {self.id} completes when its SMS is sent, not by hand")
        if self.status not in (ActionStatus.CALLING, ActionStatus.AWAITING_OUTCOME):
            raise InvalidTransition(self.id, self.status, "complete")
        if not OUTCOME_PATTERN.match(outcome):
            raise InvalidField("outcome", "outcome must be a lower-case word such as connected, no_answer, "
                                          "voicemail or busy")
        return self._finish(outcome, by, notes, now, reason=f"outcome {outcome}")

    def delete(self, by: uuid.UUID | None, *, reason: str | None = None,
               now: datetime | None = None) -> ActionDeleted:
        """Remove the action from the queue (the trash icon); any status that is not terminal."""
        now = now or utcnow()
        if self.is_terminal:
            raise InvalidTransition(self.id, self.status, "delete")
        self._move(ActionStatus.DELETED, now, by=by, reason=reason or "deleted")
        self._release()
        self.pending_command_id = None
        self.completed_at = now
        self.version += 1
        return ActionDeleted(action_id=self.id, action_type=self.type, enrollment_id=self.enrollment_id,
                             step_id=self.step_id, assignee_user_id=self.assignee_user_id, deleted_by=by,
                             reason=reason, deleted_at=now)

    # --- transitions reported by the Twilio-facing services --------------------------------------

    def sms_sent(self, command_id: uuid.UUID, at: datetime) -> ActionCompleted:
        """The sender reports our SMS sent: the action completes with outcome ``sent``."""
        self._require_pending(command_id, ActionStatus.SENDING, "SmsSent")
        return self._finish(SMS_OUTCOME, None, None, at, reason="SMS sent")

    def sms_failed(self, command_id: uuid.UUID, reason: str, at: datetime) -> None:
        """The SMS could not be sent: back to ``queued`` with the reason in ``last_error``."""
        self._require_pending(command_id, ActionStatus.SENDING, "SmsFailed")
        self._move(ActionStatus.QUEUED, at, reason=f"SMS failed: {reason}")
        self._release()
        self.pending_command_id = None
        self.last_error = reason

    def call_completed(self, command_id: uuid.UUID, call_status: str, at: datetime) -> None:
        """The call ended: keep Twilio's final status and wait for the person to record the outcome."""
        self._require_pending(command_id, ActionStatus.CALLING, "CallCompleted")
        self._move(ActionStatus.AWAITING_OUTCOME, at, reason=f"call ended: {call_status}")
        self.call_status = call_status
        self.pending_command_id = None

    # --- helpers ---------------------------------------------------------------------------------

    def _move(self, to: ActionStatus, at: datetime, *, by: uuid.UUID | None = None,
              reason: str | None = None) -> None:
        self.history.append(Transition(at=at, from_status=self.status, to_status=to, by=by, reason=reason))
        self.status = to

    def _release(self) -> None:
        self.reserved_by = None
        self.lease_expires_at = None

    def _finish(self, outcome: str, by: uuid.UUID | None, notes: str | None, at: datetime,
                reason: str) -> ActionCompleted:
        self._move(ActionStatus.COMPLETED, at, by=by, reason=reason)
        self._release()
        self.pending_command_id = None
        self.outcome = outcome
        self.notes = notes
        self.completed_at = at
        self.version += 1
        return ActionCompleted(action_id=self.id, action_type=self.type, enrollment_id=self.enrollment_id,
                               step_id=self.step_id, assignee_user_id=self.assignee_user_id,
                               outcome=outcome, notes=notes, completed_by=by, completed_at=at)

    def _require_type(self, expected: ActionType, attempted: str) -> None:
        if self.type is not expected:
            raise InvalidTransition(self.id, self.status, attempted,
                                    f"manual action {self.id} is a {self.type} action, not {expected}")

    def _require_workable(self, by: uuid.UUID | None, now: datetime, attempted: str) -> None:
        if self.status not in WORKABLE:
            raise InvalidTransition(self.id, self.status, attempted)
        if self.lease_active(now) and self.reserved_by != by:
            raise ReservedByAnother(self.id, self.reserved_by)

    def _contact_phone(self) -> str:
        phone = self.contact.phone
        if not phone:
            raise InvalidField("contact.phone", f"contact {self.contact.id} has no phone number")
        if not _E164.match(phone):
            raise InvalidField("contact.phone", f"contact {self.contact.id} has no valid E.164 phone number")
        return phone

    def _require_pending(self, command_id: uuid.UUID, expected: ActionStatus, result: str) -> None:
        if self.status is not expected or self.pending_command_id != command_id:
            raise StaleResult(f"{result} for command {command_id} does not apply to manual action {self.id}: "
                              f"status {self.status}, pending command {self.pending_command_id}")


def require_user(actor: Actor) -> uuid.UUID:
    """The actor's user id, for operations that only make sense for a person (Let's Start)."""
    if actor.user_id is None:
        raise NotAllowed("this token belongs to no user, so it has no queue; use a user's token")
    return actor.user_id
