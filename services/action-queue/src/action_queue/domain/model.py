"""The manual action and its life cycle. Plain Python: no I/O, the clock is passed in.

Every change of an action is a lifecycle event (a contract payload on action-lifecycle). A
transition method checks the rules, builds the event, applies it with ``apply`` and returns it; the
caller publishes it with ``sequence = version``. ``apply`` is the only code that changes an action,
and it is also what ``rebuild`` folds over the topic, so the state a fresh consumer rebuilds from
the events is, by construction, the state this service stores (decision 0012).

* ``version`` is the sequence number of the last lifecycle event about the action (ActionQueued
  from workflow-runner is 1; each event applied here adds one);
* commands (SendSms, PlaceCall) come with the event that records them (ActionSmsRequested,
  ActionCallRequested) and carry ``command_sequence``, their own per-action counter.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

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
    Payload,
    PlaceCall,
    SendSms,
)
from manual_actions.contracts.messages import (
    E164,
    ActionCallEnded,
    ActionCallRequested,
    ActionExpired,
    ActionFailed,
    ActionReassigned,
    ActionReleased,
    ActionRequeued,
    ActionRescheduled,
    ActionReserved,
    ActionScheduled,
    ActionSkipped,
    ActionSmsRequested,
    ActionSnoozed,
)

DEFAULT_LEASE = timedelta(minutes=5)
SMS_MAX_LENGTH = 1600
SMS_OUTCOME = "sent"
OUTCOME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_E164 = re.compile(E164)

RELEASE_LEASE_LAPSED = "lease_lapsed"
RELEASE_GIVEN_BACK = "given_back"

# After this many failed sends of one action's SMS it fails for good instead of going back to the
# queue: a person has retried twice already, and a fourth try would most likely fail the same way.
MAX_SMS_ATTEMPTS = 3

LifecycleEvent = (ActionCompleted | ActionDeleted | ActionReserved | ActionReleased | ActionSnoozed
                  | ActionScheduled | ActionRequeued | ActionSmsRequested | ActionCallRequested
                  | ActionCallEnded | ActionSkipped | ActionReassigned | ActionExpired | ActionFailed
                  | ActionRescheduled)


class ActionStatus(StrEnum):
    QUEUED = "queued"
    RESERVED = "reserved"
    SNOOZED = "snoozed"
    SCHEDULED = "scheduled"
    SENDING = "sending"
    CALLING = "calling"
    AWAITING_OUTCOME = "awaiting_outcome"
    COMPLETED = "completed"
    SKIPPED = "skipped"
    EXPIRED = "expired"
    FAILED = "failed"
    DELETED = "deleted"


TERMINAL = frozenset({ActionStatus.COMPLETED, ActionStatus.SKIPPED, ActionStatus.EXPIRED,
                      ActionStatus.FAILED, ActionStatus.DELETED})
WORKABLE = frozenset({ActionStatus.QUEUED, ActionStatus.RESERVED})
# Statuses in which nobody is working the action right now, so it may be skipped, snoozed,
# reassigned or expire (sending/calling wait for the Twilio-facing services first).
IDLE = frozenset({ActionStatus.QUEUED, ActionStatus.RESERVED, ActionStatus.SNOOZED,
                  ActionStatus.SCHEDULED})


_E = TypeVar("_E", bound=Payload)


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
    supervise others (managers and admins) or only their own actions (agents). ``team`` limits a
    supervisor to the actions assigned to these users (a manager's team); None: the whole tenant
    (admins)."""

    tenant: str
    user_id: uuid.UUID | None
    supervisor: bool
    team: frozenset[uuid.UUID] | None = None

    def can_access(self, action: ManualAction) -> bool:
        """Agents see and act on the actions assigned to them; managers on their team's; admins on
        all of their tenant's."""
        if action.tenant != self.tenant:
            return False
        if self.supervisor:
            return self.team is None or action.assignee_user_id in self.team
        return self.user_id is not None and action.assignee_user_id == self.user_id


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
    snoozed_until: datetime | None = None
    send_at: datetime | None = None
    scheduled_by: uuid.UUID | None = None
    status_reason: str | None = None
    expires_at: datetime | None = None
    due_at: datetime | None = None
    message_template: str | None = None
    history: list[Transition] = field(default_factory=list)
    # Not stored: the SMS text to propose when a person opens the action (the template rendered
    # with the contact's current data), filled in by the use case that shows the action.
    proposed_message: str | None = field(default=None, compare=False)

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
            expires_at=event.expires_at,
            due_at=event.due_at,
            message_template=event.message_template,
            version=sequence,
            history=[Transition(at=event.queued_at, from_status=None, to_status=ActionStatus.QUEUED,
                                reason=f"queued by workflow step {event.step_id}")],
        )

    # --- queries ---------------------------------------------------------------------------------

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def effective_due_at(self) -> datetime:
        """When the action is due: its due time, or when it was queued if it has none (ASAP)."""
        return self.due_at if self.due_at is not None else self.queued_at

    def queue_key(self) -> tuple[int, datetime, datetime, uuid.UUID]:
        """Let's Start order, ascending: priority desc, then due time, then age, then id."""
        return (-self.priority, self.effective_due_at, self.queued_at, self.id)

    def is_overdue(self, now: datetime) -> bool:
        """Its explicit due time passed and it is still open. An action without a due time is wanted
        as soon as possible and is never overdue."""
        return self.due_at is not None and self.due_at < now and not self.is_terminal

    def lease_active(self, now: datetime) -> bool:
        return (self.status is ActionStatus.RESERVED and self.lease_expires_at is not None
                and self.lease_expires_at > now)

    def lease_lapsed(self, now: datetime) -> bool:
        return self.status is ActionStatus.RESERVED and not self.lease_active(now)

    def snooze_over(self, now: datetime) -> bool:
        return (self.status is ActionStatus.SNOOZED and self.snoozed_until is not None
                and self.snoozed_until <= now)

    def expiry_passed(self, now: datetime) -> bool:
        return self.status in IDLE and self.expires_at is not None and self.expires_at <= now

    def is_reservable(self, now: datetime) -> bool:
        """Queued, snoozed until a time that has come, or reserved with a lease that has lapsed; and
        not past its expiry time."""
        if self.expires_at is not None and self.expires_at <= now:
            return False
        return self.status is ActionStatus.QUEUED or self.snooze_over(now) or self.lease_lapsed(now)

    def housekeeping(self, now: datetime) -> ActionExpired | ActionReleased | ActionRequeued | None:
        """What the system does to this action by itself at ``now``, if anything: expire it past its
        expiry time, end a lapsed lease, or wake it from a snooze that ended. (A due scheduled SMS is
        sent by ``send_sms``, after the checks at the moment of work.)"""
        if self.expiry_passed(now):
            return self.expire(now)
        if self.lease_lapsed(now):
            return self.lapse(now)
        if self.snooze_over(now):
            return self.wake(now)
        return None

    # --- transitions started by people -----------------------------------------------------------

    def reserve(self, user_id: uuid.UUID, now: datetime,
                lease: timedelta = DEFAULT_LEASE) -> ActionReserved:
        """Reserve the action to ``user_id`` until ``now + lease`` (Let's Start)."""
        if not self.is_reservable(now):
            if self.lease_active(now):
                raise ReservedByAnother(self.id, self.reserved_by)
            raise InvalidTransition(self.id, self.status, "reserve")
        return self._record(ActionReserved(**self._common(), reserved_by=user_id,
                                           lease_expires_at=now + lease, reserved_at=now))

    def renew_lease(self, user_id: uuid.UUID, now: datetime,
                    lease: timedelta = DEFAULT_LEASE) -> ActionReserved:
        """Extend the caller's own reservation to ``now + lease``, even if it lapsed meanwhile (as long
        as nobody else took the action)."""
        if self.status is not ActionStatus.RESERVED:
            raise InvalidTransition(self.id, self.status, "renew the reservation of")
        if self.reserved_by != user_id:
            raise ReservedByAnother(self.id, self.reserved_by)
        return self._record(ActionReserved(**self._common(), reserved_by=user_id, renewed=True,
                                           lease_expires_at=now + lease, reserved_at=now))

    def release(self, by: uuid.UUID | None, now: datetime, *, supervisor: bool = False) -> ActionReleased:
        """Give the reservation back (the holder, or a supervisor); the action is queued again."""
        if self.status is not ActionStatus.RESERVED:
            raise InvalidTransition(self.id, self.status, "release")
        if not supervisor and self.reserved_by != by and self.lease_active(now):
            raise ReservedByAnother(self.id, self.reserved_by)
        return self._record(ActionReleased(**self._common(), reason=RELEASE_GIVEN_BACK, released_by=by,
                                           released_at=now))

    def lapse(self, now: datetime) -> ActionReleased:
        """The system ends a reservation whose lease ran out."""
        if not self.lease_lapsed(now):
            raise InvalidTransition(self.id, self.status, "release a lapsed lease of",
                                    f"manual action {self.id} has no lapsed reservation")
        return self._record(ActionReleased(**self._common(), reason=RELEASE_LEASE_LAPSED, released_by=None,
                                           released_at=now))

    def snooze(self, by: uuid.UUID | None, until: datetime, now: datetime, *,
               reason: str | None = None) -> ActionSnoozed:
        """Put the action aside until ``until`` (in the future)."""
        self._require_idle(by, now, "snooze")
        if until.tzinfo is None:
            raise InvalidField("until", "until must carry a time zone offset")
        if until <= now:
            raise InvalidField("until", "until must be in the future")
        return self._record(ActionSnoozed(**self._common(), until=until, reason=reason, snoozed_by=by,
                                          snoozed_at=now))

    def reschedule(self, due_at: datetime | None, by: uuid.UUID | None, reason: str | None,
                   now: datetime) -> ActionRescheduled | None:
        """Change when the action should be worked: its due time becomes ``due_at`` (None: as soon as
        possible, i.e. due when it was queued), which moves it in the queue order. None when the due
        time is that already (nothing to record).

        Allowed while nobody is working the action (queued, reserved, snoozed, scheduled): these are
        the statuses in which the due time still decides something — where the action stands in the
        queue, or will stand once the reservation, snooze or schedule ends. The status, a reservation,
        a snooze and a schedule's send time are left as they are: only the order changes, so a person
        holding the action keeps it. Not while the SMS is sending or the call is under way (the work
        has begun; a failed SMS comes back queued and can be rescheduled then) and not once the
        action ended. Who may reschedule (the assignee, their manager, an admin) is the caller's
        check; ``due_at`` must carry a UTC offset and may lie in the past (it then counts as overdue).
        """
        if self.status not in IDLE:
            raise InvalidTransition(self.id, self.status, "reschedule")
        if due_at is not None and due_at.tzinfo is None:
            raise InvalidField("due_at", "due_at must carry a UTC offset")
        if due_at == self.due_at:
            return None
        return self._record(ActionRescheduled(**self._common(), due_at=due_at, previous_due_at=self.due_at,
                                              reason=reason, rescheduled_by=by, rescheduled_at=now))

    def move_send_time(self, by: uuid.UUID | None, send_at: datetime, now: datetime) -> ActionScheduled:
        """A scheduled SMS goes out at ``send_at`` instead (ActionScheduled with the same text and time
        zone label UTC, still on behalf of the person who scheduled it); used by bulk reschedule."""
        if self.status is not ActionStatus.SCHEDULED:
            raise InvalidTransition(self.id, self.status, "move the send time of")
        if send_at.tzinfo is None or send_at <= now:
            raise InvalidField("until", "until must be a future time with a UTC offset")
        return self._record(ActionScheduled(**self._common(), send_at=send_at, timezone="UTC",
                                            body=self._sms_text(None), scheduled_by=self.scheduled_by,
                                            scheduled_at=now))

    def wake(self, now: datetime) -> ActionRequeued:
        """The system queues a snoozed action again once its time has come."""
        if not self.snooze_over(now):
            raise InvalidTransition(self.id, self.status, "wake",
                                    f"manual action {self.id} is not due to wake")
        return self._record(ActionRequeued(**self._common(), reason="snooze ended", requeued_at=now))

    def schedule_sms(self, by: uuid.UUID | None, send_at: datetime, timezone_name: str, now: datetime, *,
                     body: str | None = None) -> ActionScheduled:
        """Send the SMS (``body`` if edited) at ``send_at``; checks run again when it is due."""
        self._require_type(ActionType.SMS, "schedule an SMS for")
        self._require_workable(by, now, "schedule an SMS for")
        if send_at <= now:
            raise InvalidField("send_at", "send_at must be in the future; send now instead")
        text = self._sms_text(body)
        return self._record(ActionScheduled(**self._common(), send_at=send_at, timezone=timezone_name,
                                            body=text, scheduled_by=by, scheduled_at=now))

    def cancel_schedule(self, by: uuid.UUID | None, now: datetime) -> ActionRequeued:
        if self.status is not ActionStatus.SCHEDULED:
            raise InvalidTransition(self.id, self.status, "cancel the scheduled SMS of")
        return self._record(ActionRequeued(**self._common(), reason="scheduled SMS cancelled", requeued_by=by,
                                           requeued_at=now))

    def sms_due(self, now: datetime) -> bool:
        return self.status is ActionStatus.SCHEDULED and self.send_at is not None and self.send_at <= now

    def send_sms(self, by: uuid.UUID | None, command_id: uuid.UUID, *, body: str | None = None,
                 now: datetime | None = None, to: str | None = None) -> tuple[ActionSmsRequested, SendSms]:
        """Hand the SMS (``body`` if the person edited it, else the queued message) to the sender.

        Status becomes ``sending`` until SmsSent or SmsFailed arrives. A scheduled SMS is sent this
        way when it is due (``by`` is then the person who scheduled it). ``to`` is the contact's
        current number when known (else the snapshot's).
        """
        now = now or utcnow()
        self.ensure_workable(ActionType.SMS, by, now)
        to = self._contact_phone(to)
        text = self._sms_text(body)
        event = self._record(ActionSmsRequested(**self._common(), command_id=command_id, body=text,
                                                requested_by=by, requested_at=now))
        return event, SendSms(command_id=command_id, action_id=self.id, to=to, body=text, requested_by=by)

    def place_call(self, by: uuid.UUID | None, command_id: uuid.UUID, *, agent_phone: str | None,
                   now: datetime | None = None,
                   to: str | None = None) -> tuple[ActionCallRequested, PlaceCall]:
        """Ask the dialer to ring ``agent_phone`` and bridge to the contact; status becomes ``calling``."""
        now = now or utcnow()
        self.ensure_workable(ActionType.CALL, by, now)
        to = self._contact_phone(to)
        if not agent_phone:
            raise InvalidField("agent_phone", "agent_phone is required: no phone is known for the assignee")
        if not _E164.match(agent_phone):
            raise InvalidField("agent_phone", "agent_phone must be an E.164 number such as +14155550100")
        event = self._record(ActionCallRequested(**self._common(), command_id=command_id,
                                                 agent_phone=agent_phone, requested_by=by, requested_at=now))
        return event, PlaceCall(command_id=command_id, action_id=self.id, to=to, agent_phone=agent_phone,
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
        return self._completed(outcome, by, notes, now)

    def skip(self, by: uuid.UUID | None, reason: str, now: datetime) -> ActionSkipped:
        """The action will not be worked (a person's choice, or ``by=None`` when a check blocked it)."""
        if by is not None:
            self._require_idle(by, now, "skip")
        elif self.status not in IDLE:
            raise InvalidTransition(self.id, self.status, "skip")
        if not reason.strip():
            raise InvalidField("reason", "a reason is required to skip an action")
        return self._record(ActionSkipped(**self._common(), reason=reason.strip(), skipped_by=by,
                                          skipped_at=now))

    def reassign(self, by: uuid.UUID | None, to: uuid.UUID, now: datetime, *,
                 reason: str | None = None) -> ActionReassigned | None:
        """Move the action to ``to``'s queue (dropping any reservation); None if it is theirs already."""
        if self.status not in IDLE:
            raise InvalidTransition(self.id, self.status, "reassign")
        if self.assignee_user_id == to:
            return None
        return self._record(ActionReassigned(action_id=self.id, action_type=self.type, assignee_user_id=to,
                                             previous_assignee_user_id=self.assignee_user_id,
                                             reassigned_by=by, reason=reason, reassigned_at=now))

    def expire(self, now: datetime) -> ActionExpired:
        """Nobody worked it in time: the action leaves the queue."""
        if self.status not in IDLE:
            raise InvalidTransition(self.id, self.status, "expire")
        return self._record(ActionExpired(**self._common(), expired_at=now))

    def delete(self, by: uuid.UUID | None, *, reason: str | None = None,
               now: datetime | None = None) -> ActionDeleted:
        """Remove the action from the queue (the trash icon); any status that is not terminal."""
        now = now or utcnow()
        if self.is_terminal:
            raise InvalidTransition(self.id, self.status, "delete")
        return self._record(ActionDeleted(action_id=self.id, action_type=self.type,
                                          enrollment_id=self.enrollment_id, step_id=self.step_id,
                                          assignee_user_id=self.assignee_user_id, deleted_by=by,
                                          reason=reason, deleted_at=now))

    # --- transitions reported by the Twilio-facing services --------------------------------------

    def sms_sent(self, command_id: uuid.UUID, at: datetime) -> ActionCompleted:
        """The sender reports our SMS sent: the action completes with outcome ``sent``."""
        self._require_pending(command_id, ActionStatus.SENDING, "SmsSent")
        return self._completed(SMS_OUTCOME, None, None, at)

    def sms_failed(self, command_id: uuid.UUID, reason: str, at: datetime, *,
                   error_code: int | None = None) -> ActionRequeued | ActionFailed:
        """The SMS could not be sent: back to ``queued`` with the reason in ``last_error`` (a person may
        retry) — or ``failed`` once ``MAX_SMS_ATTEMPTS`` sends have failed."""
        self._require_pending(command_id, ActionStatus.SENDING, "SmsFailed")
        if self.command_sequence >= MAX_SMS_ATTEMPTS:
            return self._record(ActionFailed(**self._common(), reason=reason, error_code=error_code,
                                             failed_at=at))
        return self._record(ActionRequeued(**self._common(), reason=f"SMS failed: {reason}",
                                           last_error=reason, requeued_at=at))

    def call_completed(self, command_id: uuid.UUID, call_status: str, at: datetime, *,
                       duration_seconds: int = 0) -> ActionCallEnded:
        """The call ended: keep Twilio's final status and wait for the person to record the outcome."""
        self._require_pending(command_id, ActionStatus.CALLING, "CallCompleted")
        return self._record(ActionCallEnded(**self._common(), command_id=command_id, call_status=call_status,
                                            duration_seconds=duration_seconds, ended_at=at))

    # --- applying events (the only place state changes) --------------------------------------------

    def apply(self, event: Payload) -> None:
        """Apply one lifecycle event published about this action (by this service or read back from
        the topic) and advance ``version`` by one. The caller checks the sequence."""
        if isinstance(event, ActionReserved):
            self._move(ActionStatus.RESERVED, event.reserved_at, event.reserved_by,
                       "lease renewed" if event.renewed else "reserved")
            self.reserved_by = event.reserved_by
            self.lease_expires_at = event.lease_expires_at
            self.snoozed_until = None
            self.status_reason = None
        elif isinstance(event, ActionReleased):
            self._move(ActionStatus.QUEUED, event.released_at, event.released_by, f"released: {event.reason}")
            self._release()
            self.status_reason = event.reason
        elif isinstance(event, ActionSnoozed):
            why = f"snoozed until {event.until.isoformat()}" + (f": {event.reason}" if event.reason else "")
            self._move(ActionStatus.SNOOZED, event.snoozed_at, event.snoozed_by, why)
            self._release()
            self.snoozed_until = event.until
            self.status_reason = event.reason
        elif isinstance(event, ActionScheduled):
            self._move(ActionStatus.SCHEDULED, event.scheduled_at, event.scheduled_by,
                       f"SMS scheduled for {event.send_at.isoformat()} ({event.timezone})")
            self._release()
            self.message = event.body
            self.send_at = event.send_at
            self.scheduled_by = event.scheduled_by
            self.status_reason = None
        elif isinstance(event, ActionRequeued):
            self._move(ActionStatus.QUEUED, event.requeued_at, event.requeued_by, event.reason)
            self._release()
            self._clear_waiting()
            self.pending_command_id = None
            if event.last_error is not None:
                self.last_error = event.last_error
            self.status_reason = event.reason
        elif isinstance(event, ActionSmsRequested):
            self._move(ActionStatus.SENDING, event.requested_at, event.requested_by,
                       "SMS handed to the sender")
            self._clear_waiting()
            self.message = event.body
            self.last_error = None
            self.status_reason = None
            self.pending_command_id = event.command_id
            self.command_sequence += 1
        elif isinstance(event, ActionCallRequested):
            self._move(ActionStatus.CALLING, event.requested_at, event.requested_by,
                       "call handed to the dialer")
            self.last_error = None
            self.call_status = None
            self.status_reason = None
            self.pending_command_id = event.command_id
            self.command_sequence += 1
        elif isinstance(event, ActionCallEnded):
            self._move(ActionStatus.AWAITING_OUTCOME, event.ended_at, None,
                       f"call ended: {event.call_status}")
            self.call_status = event.call_status
            self.pending_command_id = None
        elif isinstance(event, ActionRescheduled):
            # Only the order changes: status, reservation, snooze and schedule stay as they are.
            due = event.due_at.isoformat() if event.due_at is not None else "as soon as possible"
            why = f"due time changed to {due}" + (f": {event.reason}" if event.reason else "")
            self._move(self.status, event.rescheduled_at, event.rescheduled_by, why)
            self.due_at = event.due_at
        elif isinstance(event, ActionReassigned):
            to = ActionStatus.QUEUED if self.status is ActionStatus.RESERVED else self.status
            why = f"reassigned from {event.previous_assignee_user_id} to {event.assignee_user_id}"
            if event.reason:
                why += f": {event.reason}"
            self._move(to, event.reassigned_at, event.reassigned_by, why)
            self._release()
            self.assignee_user_id = event.assignee_user_id
        elif isinstance(event, ActionCompleted):
            self._end(ActionStatus.COMPLETED, event.completed_at, event.completed_by,
                      f"outcome {event.outcome}")
            self.outcome = event.outcome
            self.notes = event.notes
        elif isinstance(event, ActionSkipped):
            self._end(ActionStatus.SKIPPED, event.skipped_at, event.skipped_by, f"skipped: {event.reason}")
            self.status_reason = event.reason
        elif isinstance(event, ActionExpired):
            self._end(ActionStatus.EXPIRED, event.expired_at, None, "expired")
            self.status_reason = "expired"
        elif isinstance(event, ActionFailed):
            self._end(ActionStatus.FAILED, event.failed_at, None, f"failed: {event.reason}")
            self.last_error = event.reason
            self.status_reason = event.reason
        elif isinstance(event, ActionDeleted):
            self._end(ActionStatus.DELETED, event.deleted_at, event.deleted_by, event.reason or "deleted")
            self.status_reason = event.reason
        else:
            raise TypeError(f"{type(event).__name__} is not a lifecycle event that changes an action")
        self.version += 1

    # --- helpers ---------------------------------------------------------------------------------

    def _record(self, event: _E) -> _E:
        self.apply(event)
        return event

    def _common(self) -> dict[str, Any]:
        return {"action_id": self.id, "action_type": self.type, "assignee_user_id": self.assignee_user_id}

    def _move(self, to: ActionStatus, at: datetime, by: uuid.UUID | None, reason: str | None) -> None:
        self.history.append(Transition(at=at, from_status=self.status, to_status=to, by=by, reason=reason))
        self.status = to

    def _end(self, to: ActionStatus, at: datetime, by: uuid.UUID | None, reason: str) -> None:
        self._move(to, at, by, reason)
        self._release()
        self._clear_waiting()
        self.pending_command_id = None
        self.completed_at = at

    def _release(self) -> None:
        self.reserved_by = None
        self.lease_expires_at = None

    def _clear_waiting(self) -> None:
        self.snoozed_until = None
        self.send_at = None
        self.scheduled_by = None

    def _completed(self, outcome: str, by: uuid.UUID | None, notes: str | None,
                   at: datetime) -> ActionCompleted:
        return self._record(ActionCompleted(action_id=self.id, action_type=self.type,
                                            enrollment_id=self.enrollment_id, step_id=self.step_id,
                                            assignee_user_id=self.assignee_user_id, outcome=outcome,
                                            notes=notes, completed_by=by, completed_at=at))

    def _sms_text(self, body: str | None) -> str:
        text = (body if body is not None else self.message or "").strip()
        if not text:
            raise InvalidField("body", "the SMS has no text: the action has no message and no body was given")
        if len(text) > SMS_MAX_LENGTH:
            raise InvalidField("body",
                               f"an SMS may hold at most {SMS_MAX_LENGTH} characters, got {len(text)}")
        return text

    def _require_type(self, expected: ActionType, attempted: str) -> None:
        if self.type is not expected:
            raise InvalidTransition(self.id, self.status, attempted,
                                    f"manual action {self.id} is a {self.type} action, not {expected}")

    def _require_workable(self, by: uuid.UUID | None, now: datetime, attempted: str) -> None:
        if self.status not in WORKABLE:
            raise InvalidTransition(self.id, self.status, attempted)
        if self.lease_active(now) and self.reserved_by != by:
            raise ReservedByAnother(self.id, self.reserved_by)

    def _require_idle(self, by: uuid.UUID | None, now: datetime, attempted: str) -> None:
        if self.status not in IDLE:
            raise InvalidTransition(self.id, self.status, attempted)
        if self.lease_active(now) and self.reserved_by != by:
            raise ReservedByAnother(self.id, self.reserved_by)

    def ensure_workable(self, expected: ActionType, by: uuid.UUID | None, now: datetime) -> None:
        """Raise unless ``by`` may start sending (SMS) or calling (call) this action at ``now``."""
        attempted = "send an SMS for" if expected is ActionType.SMS else "place a call for"
        self._require_type(expected, attempted)
        if not (expected is ActionType.SMS and self.sms_due(now)):
            self._require_workable(by, now, attempted)

    def _contact_phone(self, current: str | None = None) -> str:
        phone = current or self.contact.phone
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
