"""What the use cases need from the outside world: a repository of actions inside a unit of work
that also stages outgoing messages (outbox) and records processed message ids (inbox).

The SQL implementation lives in ``action_queue.adapters``; unit tests use in-memory fakes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from types import TracebackType
from typing import Any, NamedTuple, Protocol, Self

from action_queue.domain import ActionStatus, Contact, ManualAction
from action_queue.domain.checks import ContactState
from action_queue.domain.people import QueueSettings, UserState
from manual_actions.contracts import ActionQueued, ActionType, Envelope


class ActionChanged(Exception):
    """Raised when this unit of work's change to an action ``next_reservable`` returned is written
    (by ``commit`` at the latest) and someone else changed the action since it was read (another
    device reserved it, a manager reassigned it) or another transaction holds it right now (a bulk
    chunk). Nothing of the unit of work is kept; the caller moves on."""

    def __init__(self, action_id: uuid.UUID) -> None:
        super().__init__(f"manual action {action_id} changed since it was read")
        self.action_id = action_id


class NewAction(NamedTuple):
    """One ActionQueued to materialise: its tenant, payload and envelope sequence."""

    tenant: str
    event: ActionQueued
    sequence: int


@dataclass(frozen=True)
class ActionFilter:
    """List filters; empty tuples and None mean "any". ``contact`` matches a substring of name or phone.

    ``assignees`` limits to actions assigned to one of these users (a manager's team); ``overdue``
    compares the explicit due time with ``as_of`` (True: passed and still open, False: not so);
    ``queued_from``/``queued_to`` and ``due_from``/``due_to`` are half-open ranges [from, to) on
    the queue time and on the due time (an action without one is due when queued).
    """

    assignee_user_id: uuid.UUID | None = None
    workflow_id: uuid.UUID | None = None
    contact: str | None = None
    types: tuple[ActionType, ...] = ()
    statuses: tuple[ActionStatus, ...] = ()
    assignees: tuple[uuid.UUID, ...] | None = None
    overdue: bool | None = None
    as_of: datetime | None = None
    queued_from: datetime | None = None
    queued_to: datetime | None = None
    due_from: datetime | None = None
    due_to: datetime | None = None

    def __post_init__(self) -> None:
        if self.overdue is not None and self.as_of is None:
            raise ValueError("an overdue filter needs the time it is evaluated at (as_of)")

    def matches(self, action: ManualAction) -> bool:
        """The same test the SQL repository applies, on one action in memory."""
        phone = action.contact.phone or ""
        due = action.effective_due_at
        return (self.assignee_user_id in (None, action.assignee_user_id)
                and (self.assignees is None or action.assignee_user_id in self.assignees)
                and self.workflow_id in (None, action.workflow_id)
                and (not self.types or action.type in self.types)
                and (not self.statuses or action.status in self.statuses)
                and (not self.contact or self.contact.lower() in action.contact.name.lower()
                     or self.contact.lower() in phone.lower())
                and (self.overdue is None or self.as_of is None
                     or action.is_overdue(self.as_of) == self.overdue)
                and (self.queued_from is None or action.queued_at >= self.queued_from)
                and (self.queued_to is None or action.queued_at < self.queued_to)
                and (self.due_from is None or due >= self.due_from)
                and (self.due_to is None or due < self.due_to))


# Neither frozen (its __init__ would cost a setattr call per field) nor slotted (orjson serialises a
# dataclass with a __dict__ twice as fast): a list of 50 is built and serialised per request.
@dataclass
class ActionSummary:
    """An action as a list shows it: its columns without the history, read straight from storage
    (a list builds no domain objects: for a page of 50 that was most of the request's CPU).
    ``of`` makes one from a domain action (in-memory fakes, tests). A read-only view: changes go
    through the domain's ``ManualAction``."""

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
    contact: Contact
    assignee_user_id: uuid.UUID | None
    message: str | None
    priority: int
    reserved_by: uuid.UUID | None
    lease_expires_at: datetime | None
    last_error: str | None
    call_status: str | None
    outcome: str | None
    notes: str | None
    queued_at: datetime
    due_at: datetime | None
    completed_at: datetime | None
    snoozed_until: datetime | None
    send_at: datetime | None
    status_reason: str | None
    version: int

    @property
    def effective_due_at(self) -> datetime:
        """As ``ManualAction.effective_due_at``: the due time, or the queue time without one."""
        return self.due_at if self.due_at is not None else self.queued_at

    @classmethod
    def of(cls, action: ManualAction) -> ActionSummary:
        return cls(**{name: getattr(action, name) for name in SUMMARY_FIELDS})


SUMMARY_FIELDS: tuple[str, ...] = tuple(ActionSummary.__dataclass_fields__)


class SortKey(StrEnum):
    PRIORITY = "priority"
    DUE_AT = "due_at"
    QUEUED_AT = "queued_at"


# Sort columns after the named key, ascending: the Let's Start tie-breakers, ending in the unique
# id, so every sort is a total order and keyset pagination never skips or repeats an action.
_TIE_BREAKERS: dict[SortKey, tuple[str, ...]] = {
    SortKey.PRIORITY: ("effective_due_at", "queued_at", "id"),
    SortKey.DUE_AT: ("queued_at", "id"),
    SortKey.QUEUED_AT: ("id",),
}
_KEY_COLUMN = {SortKey.PRIORITY: "priority", SortKey.DUE_AT: "effective_due_at",
               SortKey.QUEUED_AT: "queued_at"}


@dataclass(frozen=True)
class Sort:
    """A list order: ``key`` ascending or descending, then the tie-breakers ascending.
    ``-priority`` is the Let's Start order (priority desc, due time, age, id)."""

    key: SortKey = SortKey.QUEUED_AT
    descending: bool = False

    @classmethod
    def parse(cls, text: str) -> Sort:
        """``priority``, ``-priority``, ``due_at``, ... (ValueError for anything else)."""
        descending = text.startswith("-")
        return cls(SortKey(text[1:] if descending else text), descending)

    def __str__(self) -> str:
        return ("-" if self.descending else "") + self.key.value

    @property
    def columns(self) -> tuple[tuple[str, bool], ...]:
        """(attribute, descending) per sort column, most significant first."""
        return ((_KEY_COLUMN[self.key], self.descending),
                *((name, False) for name in _TIE_BREAKERS[self.key]))

    def values(self, action: ManualAction | ActionSummary) -> tuple[Any, ...]:
        """The action's values of ``columns``: what a cursor after it holds."""
        return tuple(getattr(action, name) for name, _ in self.columns)

    def sort_key(self, action: ManualAction) -> tuple[Any, ...]:
        """A Python sort key giving this order (for in-memory fakes)."""
        out: list[Any] = []
        for (_, descending), value in zip(self.columns, self.values(action), strict=True):
            out.append(_Reversed(value) if descending else value)
        return tuple(out)


class _Reversed:
    """Wraps a value so that ascending sorting orders it descending."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: _Reversed) -> bool:
        return bool(self.value > other.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and bool(self.value == other.value)

    def __hash__(self) -> int:
        return hash(self.value)


DEFAULT_SORT = Sort()


@dataclass(frozen=True)
class Cursor:
    """Keyset position: the list continues strictly after the action whose ``sort`` values are
    ``values``."""

    sort: Sort
    values: tuple[Any, ...]

    @classmethod
    def after(cls, sort: Sort, action: ManualAction | ActionSummary) -> Cursor:
        return cls(sort, sort.values(action))


class BulkOperation(StrEnum):
    REASSIGN = "reassign"
    DELETE = "delete"
    SNOOZE = "snooze"
    RESCHEDULE = "reschedule"  # due time := ``until`` (ActionRescheduled); a scheduled SMS goes out then


class BulkStatus(StrEnum):
    RUNNING = "running"
    DONE = "done"


@dataclass
class BulkRequest:
    """One bulk operation over the actions matching ``filters``, identified by the client's
    ``request_id`` within the tenant. Worked in chunks by id; ``last_id`` is where the next chunk
    starts, saved in the same transaction as the chunk's changes (so a restart resumes exactly)."""

    tenant: str
    request_id: str
    operation: BulkOperation
    filters: ActionFilter
    requested_by: uuid.UUID | None
    created_at: datetime
    assignee_user_id: uuid.UUID | None = None
    until: datetime | None = None
    reason: str | None = None
    status: BulkStatus = BulkStatus.RUNNING
    matched: int = 0
    changed: int = 0
    unchanged: int = 0
    last_id: uuid.UUID | None = None
    finished_at: datetime | None = None

    def same_request(self, other: BulkRequest) -> bool:
        """Whether ``other`` asks for exactly the same work (a retry of this request). The time an
        overdue filter is evaluated at is the first request's, so it does not count."""
        filters = replace(other.filters, as_of=self.filters.as_of)
        return ((self.operation, self.filters, self.assignee_user_id, self.until, self.reason)
                == (other.operation, filters, other.assignee_user_id, other.until, other.reason))


class BulkRequestStore(Protocol):
    async def add_if_absent(self, request: BulkRequest) -> BulkRequest:
        """Store ``request`` unless the tenant has one with its ``request_id``; return the stored one."""

    async def get(self, tenant: str, request_id: str) -> BulkRequest | None: ...

    async def next_running(self) -> BulkRequest | None:
        """Lock and return a running request no other transaction holds (oldest first)."""

    async def save(self, request: BulkRequest) -> None: ...


class ActionRepository(Protocol):
    async def add_if_absent(self, action: ManualAction) -> bool:
        """Insert ``action`` unless an action with its id exists; True when inserted."""

    async def tenant_of(self, action_id: uuid.UUID) -> str | None:
        """The tenant owning ``action_id`` (whatever the caller's tenant), None if unknown."""

    async def add_queued_if_absent(self, actions: Sequence[NewAction]) -> set[uuid.UUID]:
        """Materialise those of ``actions`` (distinct ids) whose id does not exist yet, each as
        ``ManualAction.from_queued`` describes it; the ids inserted."""

    async def tenants_of(self, action_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
        """The owning tenant of each known id of ``action_ids`` (unknown ids are left out)."""

    async def get(self, tenant: str, action_id: uuid.UUID, *,
                  for_update: bool = False) -> ManualAction | None:
        """The tenant's action; ``for_update`` locks it until the unit of work ends."""

    async def save(self, action: ManualAction) -> None:
        """Persist every mutable field of an action obtained from this repository."""

    async def next_reservable(self, tenant: str, assignee_user_id: uuid.UUID, now: datetime, *,
                              passing_over: Collection[uuid.UUID] = ()) -> ManualAction | None:
        """The assignee's first reservable action by (priority desc, effective due time, queued_at,
        id), other than those in ``passing_over``. Its ``save`` writes only if nobody changed the
        action since and no other transaction holds it (``ActionChanged`` from ``commit``
        otherwise), so two callers never both reserve it and none waits for a bulk operation's
        lock; inside a transaction it is also locked, and rows held by others are not read."""

    async def due(self, now: datetime, *, limit: int, tenant: str | None = None) -> Sequence[ManualAction]:
        """Lock and return up to ``limit`` actions (of any tenant, or of ``tenant``) that need the system
        at ``now``: past their expiry, with a lapsed lease, a snooze that ended or a scheduled SMS
        that is due. Rows another transaction holds are skipped."""

    async def list(self, tenant: str, filters: ActionFilter, *, limit: int, after: Cursor | None,
                   sort: Sort = DEFAULT_SORT) -> Sequence[ActionSummary]:
        """Up to ``limit`` matching actions in ``sort`` order, strictly after ``after``."""


    async def counts(self, tenant: str, filters: ActionFilter) -> dict[tuple[ActionStatus, ActionType], int]:
        """How many of the tenant's actions match ``filters`` apart from its statuses, per (status, type)."""

    async def matching_ids(self, tenant: str, filters: ActionFilter, *, after: uuid.UUID | None,
                           limit: int) -> Sequence[uuid.UUID]:
        """Up to ``limit`` ids of matching actions in id order, strictly after ``after`` (bulk chunks)."""

    async def get_many(self, tenant: str, ids: Sequence[uuid.UUID]) -> Sequence[ManualAction]:
        """The tenant's actions with these ids, locked until the unit of work ends (in id order, so
        two bulk chunks never deadlock)."""

    async def save_many(self, actions: Sequence[ManualAction]) -> None:
        """``save`` for many actions in one round trip."""


class ContactRepository(Protocol):
    async def get(self, tenant: str, contact_id: uuid.UUID) -> ContactState | None:
        """The contact's last known state, None if action-queue never heard of it."""

    async def upsert(self, tenant: str, contact_id: uuid.UUID, state: ContactState) -> bool:
        """Store ``state`` unless a state with a version at least as new is stored; True if stored."""


class UserRepository(Protocol):
    async def get(self, tenant: str, user_id: uuid.UUID) -> UserState | None:
        """The user's last known state, None if action-queue never heard of them."""

    async def upsert(self, tenant: str, state: UserState) -> bool:
        """Store ``state`` unless a state with a version at least as new is stored; True if stored."""

    async def team(self, tenant: str, team_id: uuid.UUID) -> Sequence[UserState]:
        """The team's users that are not deleted, by user id."""

    async def out_with_queued(self, now: datetime, *, limit: int,
                              after: tuple[str, uuid.UUID] | None = None) -> Sequence[tuple[str, UserState]]:
        """Up to ``limit`` (tenant, user), after ``after`` in (tenant, user id) order, whose absence
        covers ``now`` and who have queued actions; locked, skipping locked users. May include users
        the tenant's settings exempt (callers check ``is_out`` with the settings again)."""


class SettingsRepository(Protocol):
    async def get(self, tenant: str) -> QueueSettings:
        """The tenant's settings, the defaults when it never saved any."""

    async def put(self, tenant: str, settings: QueueSettings, by: uuid.UUID | None) -> QueueSettings:
        """Replace the tenant's settings; returns them with the new ``version``."""


class UnitOfWork(Protocol):
    """One database transaction. Leaving the block without ``commit()`` rolls everything back.

    An optimistic unit of work (Let's Start's, ``ApiContext.claim``) holds no transaction and no
    lock: its ``commit`` writes the one action's change and its event in one atomic statement, or
    raises ``ActionChanged`` and writes nothing."""

    @property
    def actions(self) -> ActionRepository: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None: ...

    async def commit(self) -> None: ...

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the next ``commit`` of this block has succeeded (e.g. to count what
        it published); never if the block ends without one or the commit fails."""

    async def publish(self, topic: str, envelope: Envelope[Any]) -> None:
        """Stage ``envelope`` for ``topic``; it is published only if the transaction commits."""

    async def publish_many(self, messages: Sequence[tuple[str, Envelope[Any]]]) -> None:
        """``publish`` for many (topic, envelope) pairs in one round trip, in order."""

    @property
    def bulk(self) -> BulkRequestStore: ...

    @property
    def contacts(self) -> ContactRepository: ...

    @property
    def users(self) -> UserRepository: ...

    @property
    def settings(self) -> SettingsRepository: ...

    async def first_time_seen(self, consumer: str, message_id: uuid.UUID) -> bool:
        """Record ``message_id`` as processed; False when it already was (a redelivery)."""


class UnitOfWorkFactory(Protocol):
    def __call__(self) -> UnitOfWork: ...
