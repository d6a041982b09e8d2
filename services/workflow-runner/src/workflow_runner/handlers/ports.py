"""What the handlers need from storage: repositories and a unit of work.

Every method takes the tenant and only ever sees that tenant's rows; asking for another tenant's
entity behaves exactly like asking for a missing one. Implemented with SQLAlchemy in
``adapters.sql`` and in memory by the unit tests' fakes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, Self

from manual_actions.contracts import Envelope
from workflow_runner.domain.directory import Team
from workflow_runner.domain.enrollments import Enrollment, ManualAction, Timer
from workflow_runner.domain.people import Contact, User
from workflow_runner.domain.workflows import Workflow

Cursor = tuple[datetime, uuid.UUID]
"""Keyset pagination position: (created_at, id) of the last item of the previous page."""


@dataclass(frozen=True)
class ContactFilter:
    """Conditions of a contact listing; None means "any". ``unassigned`` True: no owner, False:
    some owner. ``name_contains`` is case-insensitive; ``email`` too."""

    tag: str | None = None
    owner_user_id: uuid.UUID | None = None
    unassigned: bool | None = None
    phone: str | None = None
    email: str | None = None
    external_id: str | None = None
    name_contains: str | None = None


class TeamRepository(Protocol):
    async def add(self, team: Team) -> None: ...
    async def get(self, tenant: str, team_id: uuid.UUID, *, for_update: bool = False) -> Team | None: ...
    async def get_by_name(self, tenant: str, name: str) -> Team | None: ...
    async def update(self, team: Team) -> None: ...

    async def delete(self, tenant: str, team_id: uuid.UUID) -> None:
        """Remove the team (callers first check it has no members that are not deleted)."""
        ...

    async def count_members(self, tenant: str, team_id: uuid.UUID) -> int:
        """Users of the team that are not deleted."""
        ...

    async def list(self, tenant: str, *, limit: int, after: Cursor | None = None) -> Sequence[Team]: ...


class UserRepository(Protocol):
    """Deleted users are only returned with ``include_deleted=True``."""

    async def add(self, user: User) -> None: ...
    async def get(
        self, tenant: str, user_id: uuid.UUID, *, for_update: bool = False, include_deleted: bool = False
    ) -> User | None: ...
    async def get_many(
        self, tenant: str, user_ids: Collection[uuid.UUID], *, include_deleted: bool = False
    ) -> dict[uuid.UUID, User]: ...
    async def update(self, user: User) -> None: ...

    async def list(
        self,
        tenant: str,
        *,
        limit: int,
        after: Cursor | None = None,
        role: str | None = None,
        team_id: uuid.UUID | None = None,
        availability: str | None = None,
    ) -> Sequence[User]:
        """Oldest first, after ``after``; deleted users are left out."""
        ...


class ContactRepository(Protocol):
    """Deleted contacts are only returned with ``include_deleted=True``."""

    async def add(self, contact: Contact) -> None: ...
    async def get(
        self,
        tenant: str,
        contact_id: uuid.UUID,
        *,
        for_update: bool = False,
        include_deleted: bool = False,
    ) -> Contact | None: ...
    async def update(self, contact: Contact) -> None: ...
    async def external_id_taken(
        self, tenant: str, external_id: str, *, other_than: uuid.UUID | None
    ) -> bool: ...

    async def upsert_many(
        self, contacts: Sequence[Contact], fields_present: Collection[str]
    ) -> list[Contact]:
        """Insert each contact, or, when its ``external_id`` is taken, update that contact's
        ``fields_present`` (version + 1, no longer deleted). Returns the stored contacts in order."""
        ...

    async def list(
        self, tenant: str, *, limit: int, after: Cursor | None = None, filters: ContactFilter | None = None
    ) -> Sequence[Contact]:
        """Oldest first, after ``after``; deleted contacts are left out."""
        ...


class WorkflowRepository(Protocol):
    async def add(self, workflow: Workflow) -> None: ...
    async def get(
        self, tenant: str, workflow_id: uuid.UUID, *, for_update: bool = False
    ) -> Workflow | None: ...

    async def save(self, workflow: Workflow) -> None:
        """Persist name changes, a changed draft and new versions. Published versions are never rewritten."""
        ...

    async def list(self, tenant: str, *, limit: int, offset: int) -> Sequence[Workflow]: ...


class EnrollmentRepository(Protocol):
    async def add(self, enrollment: Enrollment) -> None: ...
    async def get(
        self, tenant: str, enrollment_id: uuid.UUID, *, for_update: bool = False
    ) -> Enrollment | None: ...

    async def save(self, enrollment: Enrollment) -> None:
        """Persist state and append history entries not stored yet."""
        ...

    async def running_for(
        self, tenant: str, workflow_id: uuid.UUID, contact_id: uuid.UUID
    ) -> Enrollment | None:
        """The contact's active or waiting enrollment in this workflow, if any."""
        ...

    async def running_contact_ids(self, tenant: str, contact_ids: Collection[uuid.UUID]) -> set[uuid.UUID]:
        """Those of ``contact_ids`` that have an active or waiting enrollment (one query)."""
        ...

    async def list(
        self,
        tenant: str,
        *,
        workflow_id: uuid.UUID | None = None,
        contact_id: uuid.UUID | None = None,
        limit: int,
        offset: int,
    ) -> Sequence[Enrollment]:
        """Oldest first, optionally only one workflow's or one contact's."""
        ...


class ActionRepository(Protocol):
    async def add(self, action: ManualAction) -> None: ...
    async def get(
        self, tenant: str, action_id: uuid.UUID, *, for_update: bool = False
    ) -> ManualAction | None: ...
    async def save(self, action: ManualAction) -> None: ...


class RoundRobinRepository(Protocol):
    async def ensure(self, tenant: str, workflow_id: uuid.UUID, step_ids: Collection[str]) -> None:
        """Create the round robin state (no scores yet) of each step that has none."""
        ...

    async def load(
        self, tenant: str, workflow_id: uuid.UUID, *, for_update: bool = True
    ) -> dict[str, dict[str, int]]:
        """Round robin scores per Assign User step (user id text -> score); locked until commit so
        concurrent enrollments take turns and see each other's picks."""
        ...

    async def save(
        self, tenant: str, workflow_id: uuid.UUID, scores: Mapping[str, Mapping[str, int]]
    ) -> None: ...


class TimerRepository(Protocol):
    """Durable timers of enrollments (Wait ends, manual step timeouts)."""

    async def add_many(self, timers: Sequence[Timer]) -> None: ...

    async def claim_due(self, now: datetime, limit: int) -> list[Timer]:
        """Unfired timers due at ``now`` of every tenant, oldest first, locked until commit;
        rows another transaction holds are skipped (SKIP LOCKED)."""
        ...

    async def mark_fired(self, timers: Sequence[Timer], at: datetime) -> None: ...

    async def pending_for(self, tenant: str, enrollment_id: uuid.UUID) -> list[Timer]:
        """Unfired timers of one enrollment (for tests and support)."""
        ...


class UnitOfWork(Protocol):
    """One database transaction. Leaving the ``async with`` block without ``commit()`` rolls back."""

    teams: TeamRepository
    users: UserRepository
    contacts: ContactRepository
    workflows: WorkflowRepository
    enrollments: EnrollmentRepository
    actions: ActionRepository
    round_robin: RoundRobinRepository
    timers: TimerRepository

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def commit(self) -> None: ...
    async def rollback(self) -> None: ...

    async def publish(self, topic: str, envelope: Envelope[Any]) -> None:
        """Stage ``envelope`` in the outbox of this transaction (published after commit)."""
        ...

    async def publish_documents(self, topic: str, documents: Sequence[dict[str, Any]]) -> None:
        """``publish`` for many envelopes at once, given as their JSON documents (bulk operations)."""
        ...

    async def first_time_seen(self, consumer: str, message_id: uuid.UUID) -> bool:
        """Record an incoming message id; False when this consumer already processed it."""
        ...


UnitOfWorkFactory = Callable[[], UnitOfWork]
