"""Exact pending-action counts from the action-lifecycle stream, as plain functions.

Counting runs in two stages (the stream processing that drives them lives in
``dashboard.entrypoints.streams``; why two stages: ``docs/decisions/0010-dashboard-pending-counts.md``):

1. **Per action** (``count_lifecycle_event``), on the lifecycle topic partition that holds the
   action: the stored ``ActionState`` says whether the action is pending; an event with a newer
   ``sequence`` changes that state and yields a ``Delta`` (``+1`` when it becomes pending, ``-1``
   when a pending action is completed or deleted). Events whose sequence is not newer than the
   last applied one have no effect, whatever order they arrive in.
2. **Per tenant** (``apply_delta``): each delta carries the lifecycle partition and offset it came
   from; the tenant's ``TenantPending`` remembers the last offset applied per source partition, so
   a delta delivered again is applied at most once.

At-least-once delivery means stage 1 can see the *same* message again after a crash, after its
state change was stored but possibly before its delta reached stage 2. Such a redelivery (same
partition, offset not after the last one applied to the action) must re-send exactly the delta
computed the first time, not recompute it from the already-advanced state: the state keeps the
non-empty deltas of the action's recent offsets for that purpose. Stage 2 drops whatever it had
already applied.

Everything here is pure: no I/O, no clock. Records (``to_record`` / ``from_record``) are the JSON
documents stored in the faust tables; their layout is part of the changelog format, so change it
only compatibly (new optional keys).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from manual_actions.contracts import ActionCompleted, ActionDeleted, ActionQueued, ActionType, Envelope
from manual_actions.contracts.messages import ActionExpired, ActionFailed, ActionReassigned, ActionSkipped

# Offsets of one action whose deltas are kept for redelivery. Only messages after the last
# committed offset can be redelivered, and an action has one ActionQueued and one terminal event in
# practice, so a handful is plenty; the cap only bounds a pathological action's record.
MAX_REMEMBERED_DELTAS = 16


class LifecycleKind(StrEnum):
    QUEUED = "queued"
    COMPLETED = "completed"
    DELETED = "deleted"
    SKIPPED = "skipped"
    EXPIRED = "expired"
    FAILED = "failed"
    REASSIGNED = "reassigned"


# Lifecycle events after which an action is no longer pending. Every other transition (reserved,
# snoozed, scheduled, sending, ...) leaves an action pending, so the counter ignores those events.
_ENDING: dict[type[Any], LifecycleKind] = {
    ActionCompleted: LifecycleKind.COMPLETED,
    ActionDeleted: LifecycleKind.DELETED,
    ActionSkipped: LifecycleKind.SKIPPED,
    ActionExpired: LifecycleKind.EXPIRED,
    ActionFailed: LifecycleKind.FAILED,
}


@dataclass(frozen=True)
class SourcePosition:
    """Where a lifecycle message was read: its partition and offset in the lifecycle topic."""

    partition: int
    offset: int


@dataclass(frozen=True)
class LifecycleFact:
    """What the counter needs from one lifecycle event."""

    tenant: str
    action_id: str
    sequence: int
    kind: LifecycleKind
    action_type: ActionType
    assignee: str | None


def fact_from_envelope(envelope: Envelope[Any]) -> LifecycleFact | None:
    """The fact carried by a decoded lifecycle envelope; None for message types the counter ignores."""
    data = envelope.data
    if isinstance(data, ActionQueued):
        kind = LifecycleKind.QUEUED
    elif isinstance(data, ActionReassigned):
        kind = LifecycleKind.REASSIGNED
    elif type(data) in _ENDING:
        kind = _ENDING[type(data)]
    else:
        return None
    return LifecycleFact(
        tenant=envelope.tenant,
        action_id=str(data.action_id),
        sequence=envelope.sequence,
        kind=kind,
        action_type=data.action_type,
        assignee=str(data.assignee_user_id) if data.assignee_user_id is not None else None,
    )


@dataclass(frozen=True)
class CountChange:
    """One unit added to (or removed from) the pending count of one type and one assignee."""

    action_type: ActionType
    assignee: str | None
    amount: int

    def to_record(self) -> dict[str, Any]:
        return {"type": self.action_type.value, "assignee": self.assignee, "amount": self.amount}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> CountChange:
        assignee = record["assignee"]
        amount = record["amount"]
        if assignee is not None and not isinstance(assignee, str):
            raise ValueError("assignee must be a string or null")
        if not isinstance(amount, int) or isinstance(amount, bool) or amount not in (-1, 1):
            raise ValueError("amount must be +1 or -1")
        return cls(action_type=ActionType(record["type"]), assignee=assignee, amount=amount)


Delta = tuple[CountChange, ...]
"""The changes one lifecycle event makes to its tenant's counts; empty when it changes nothing."""


def _delta_to_record(delta: Delta) -> list[dict[str, Any]]:
    return [change.to_record() for change in delta]


def _delta_from_record(records: Iterable[Mapping[str, Any]]) -> Delta:
    return tuple(CountChange.from_record(r) for r in records)


@dataclass(frozen=True)
class ActionState:
    """Stage-1 state of one action (table ``actions``, keyed by action id).

    ``deltas`` maps recent source offsets (of ``last_source_partition``) to the non-empty delta
    computed for them; an offset not listed yielded no delta.
    """

    tenant: str
    action_type: ActionType
    assignee: str | None
    pending: bool
    last_sequence: int
    last_source_partition: int
    last_source_offset: int
    deltas: Mapping[int, Delta] = field(default_factory=dict)

    @property
    def last_delta(self) -> Delta:
        """The delta of the last applied event (empty if it changed no count)."""
        return self.deltas.get(self.last_source_offset, ())

    def to_record(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "type": self.action_type.value,
            "assignee": self.assignee,
            "pending": self.pending,
            "last_sequence": self.last_sequence,
            "last_source_partition": self.last_source_partition,
            "last_source_offset": self.last_source_offset,
            # JSON object keys are strings; offsets are restored to int by from_record.
            "deltas": {str(offset): _delta_to_record(delta) for offset, delta in self.deltas.items()},
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ActionState:
        return cls(
            tenant=record["tenant"],
            action_type=ActionType(record["type"]),
            assignee=record["assignee"],
            pending=bool(record["pending"]),
            last_sequence=int(record["last_sequence"]),
            last_source_partition=int(record["last_source_partition"]),
            last_source_offset=int(record["last_source_offset"]),
            deltas={int(offset): _delta_from_record(d) for offset, d in record.get("deltas", {}).items()},
        )


class StageOneOutcome(StrEnum):
    APPLIED = "applied"
    """A newer event: the state was advanced (the delta may still be empty)."""
    STALE = "stale"
    """Sequence not newer than the last applied one: no effect."""
    REDELIVERED = "redelivered"
    """The same message seen again: the delta stored for it is sent again, the state is unchanged."""


@dataclass(frozen=True)
class StageOneResult:
    outcome: StageOneOutcome
    state: ActionState | None
    """The state to store, or None to leave the table as it is."""
    delta: Delta
    """The delta to send to stage 2 (nothing is sent when empty)."""


class TenantMismatch(ValueError):
    """An event names a different tenant than the one its action belongs to."""


def count_lifecycle_event(
    current: ActionState | None, fact: LifecycleFact, position: SourcePosition
) -> StageOneResult:
    """Stage 1: the effect of one lifecycle event on its action and on the pending counts.

    * Redelivery (same partition, offset not after the action's last one): the delta stored for
      that offset, state unchanged.
    * Sequence not newer than ``last_sequence``: no effect (duplicates, replays, late arrivals).
    * ActionQueued: the action becomes pending, ``+1`` for its type and assignee (if it was already
      pending under another type or assignee, the count moves: ``-1`` old, ``+1`` new).
    * ActionReassigned: a pending action's count moves to the new assignee (``-1`` old, ``+1`` new);
      an action that was not pending changes no count.
    * ActionCompleted / ActionDeleted / ActionSkipped / ActionExpired / ActionFailed: a pending
      action stops being pending, ``-1`` for the type and assignee it was counted under; an action
      that was not pending changes no count.

    Raises TenantMismatch when the event's tenant differs from the action's.
    """
    if current is not None and fact.tenant != current.tenant:
        raise TenantMismatch(
            f"event for action {fact.action_id} names tenant {fact.tenant!r}, "
            f"but the action belongs to tenant {current.tenant!r}"
        )
    if (
        current is not None
        and position.partition == current.last_source_partition
        and position.offset <= current.last_source_offset
    ):
        return StageOneResult(StageOneOutcome.REDELIVERED, None, current.deltas.get(position.offset, ()))
    if current is not None and fact.sequence <= current.last_sequence:
        return StageOneResult(StageOneOutcome.STALE, None, ())

    counted = current if current is not None and current.pending else None
    changes: list[CountChange] = []
    if fact.kind is LifecycleKind.QUEUED:
        if counted is None:
            changes.append(CountChange(fact.action_type, fact.assignee, +1))
        elif (counted.action_type, counted.assignee) != (fact.action_type, fact.assignee):
            changes.append(CountChange(counted.action_type, counted.assignee, -1))
            changes.append(CountChange(fact.action_type, fact.assignee, +1))
        action_type, assignee, pending = fact.action_type, fact.assignee, True
    elif fact.kind is LifecycleKind.REASSIGNED:
        if counted is not None and counted.assignee != fact.assignee:
            changes.append(CountChange(counted.action_type, counted.assignee, -1))
            changes.append(CountChange(counted.action_type, fact.assignee, +1))
        action_type, assignee, pending = fact.action_type, fact.assignee, counted is not None
    else:
        if counted is not None:
            changes.append(CountChange(counted.action_type, counted.assignee, -1))
            # Keep the type and assignee it was counted under: they describe what was pending.
            action_type, assignee = counted.action_type, counted.assignee
        else:
            action_type, assignee = fact.action_type, fact.assignee
        pending = False

    delta: Delta = tuple(changes)
    remembered: dict[int, Delta] = {}
    if current is not None and current.last_source_partition == position.partition:
        remembered.update(current.deltas)
    if delta:
        remembered[position.offset] = delta
    if len(remembered) > MAX_REMEMBERED_DELTAS:
        remembered = dict(sorted(remembered.items())[-MAX_REMEMBERED_DELTAS:])
    state = ActionState(
        tenant=fact.tenant,
        action_type=action_type,
        assignee=assignee,
        pending=pending,
        last_sequence=fact.sequence,
        last_source_partition=position.partition,
        last_source_offset=position.offset,
        deltas=remembered,
    )
    return StageOneResult(StageOneOutcome.APPLIED, state, delta)


# --- stage 2 -----------------------------------------------------------------------------------


class InvalidDelta(ValueError):
    """A message on the delta topic that is not a delta this service wrote."""


@dataclass(frozen=True)
class DeltaMessage:
    """A stage-1 delta on its way to stage 2 (the delta topic, keyed by tenant)."""

    tenant: str
    source: SourcePosition
    changes: Delta

    def to_json_bytes(self) -> bytes:
        return json.dumps(
            {
                "tenant": self.tenant,
                "source_partition": self.source.partition,
                "source_offset": self.source.offset,
                "changes": _delta_to_record(self.changes),
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json_bytes(cls, raw: bytes | None) -> DeltaMessage:
        """Parse a delta; raise InvalidDelta naming what is wrong."""
        if raw is None:
            raise InvalidDelta("empty message value")
        try:
            document = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidDelta(f"not JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise InvalidDelta("delta must be a JSON object")
        try:
            tenant = document["tenant"]
            partition = document["source_partition"]
            offset = document["source_offset"]
            changes = _delta_from_record(document["changes"])
        except KeyError as exc:
            raise InvalidDelta(f"field {exc.args[0]}: missing") from exc
        except (TypeError, ValueError) as exc:
            raise InvalidDelta(f"field changes: {exc}") from exc
        if not isinstance(tenant, str) or not tenant:
            raise InvalidDelta("field tenant: must be a non-empty string")
        for name, value in (("source_partition", partition), ("source_offset", offset)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidDelta(f"field {name}: must be a non-negative integer")
        return cls(tenant=tenant, source=SourcePosition(partition, offset), changes=changes)


@dataclass(frozen=True)
class Counts:
    """Pending actions: all of them, and split by type."""

    calls: int = 0
    sms: int = 0

    @property
    def total(self) -> int:
        return self.calls + self.sms

    @property
    def is_zero(self) -> bool:
        return self.calls == 0 and self.sms == 0

    def plus(self, action_type: ActionType, amount: int) -> Counts:
        if action_type is ActionType.CALL:
            return replace(self, calls=self.calls + amount)
        return replace(self, sms=self.sms + amount)

    def to_record(self) -> dict[str, int]:
        return {"total": self.total, "calls": self.calls, "sms": self.sms}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Counts:
        return cls(calls=int(record["calls"]), sms=int(record["sms"]))


@dataclass(frozen=True)
class TenantPending:
    """Stage-2 state of one tenant (table ``pending``, keyed by tenant).

    ``applied`` maps each lifecycle partition to the last source offset whose delta was applied.
    """

    tenant: str
    all: Counts = Counts()
    by_assignee: Mapping[str, Counts] = field(default_factory=dict)
    unassigned: Counts = Counts()
    applied: Mapping[int, int] = field(default_factory=dict)

    def has_negative_count(self) -> bool:
        everything = [self.all, self.unassigned, *self.by_assignee.values()]
        return any(c.calls < 0 or c.sms < 0 for c in everything)

    def to_record(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            **self.all.to_record(),
            "by_assignee": {user: counts.to_record() for user, counts in self.by_assignee.items()},
            "unassigned": self.unassigned.to_record(),
            "applied": {str(partition): offset for partition, offset in self.applied.items()},
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> TenantPending:
        return cls(
            tenant=record["tenant"],
            all=Counts.from_record(record),
            by_assignee={user: Counts.from_record(c) for user, c in record["by_assignee"].items()},
            unassigned=Counts.from_record(record["unassigned"]),
            applied={int(partition): int(offset) for partition, offset in record["applied"].items()},
        )


def apply_delta(current: TenantPending | None, message: DeltaMessage) -> TenantPending | None:
    """Stage 2: the tenant's counts after ``message``; None when it was already applied.

    Deltas from one source partition reach one tenant in source-offset order, so an offset at or
    before the last one applied from that partition is a redelivery and is dropped.
    """
    state = current if current is not None else TenantPending(tenant=message.tenant)
    if state.tenant != message.tenant:
        raise TenantMismatch(f"delta for tenant {message.tenant!r} applied to tenant {state.tenant!r}")
    last = state.applied.get(message.source.partition)
    if last is not None and message.source.offset <= last:
        return None
    totals = state.all
    unassigned = state.unassigned
    by_assignee = dict(state.by_assignee)
    for change in message.changes:
        totals = totals.plus(change.action_type, change.amount)
        if change.assignee is None:
            unassigned = unassigned.plus(change.action_type, change.amount)
        else:
            counts = by_assignee.get(change.assignee, Counts()).plus(change.action_type, change.amount)
            if counts.is_zero:
                # An assignee with nothing pending is simply absent: the map stays small.
                by_assignee.pop(change.assignee, None)
            else:
                by_assignee[change.assignee] = counts
    applied = {**state.applied, message.source.partition: message.source.offset}
    return TenantPending(
        tenant=state.tenant, all=totals, by_assignee=by_assignee, unassigned=unassigned, applied=applied
    )
