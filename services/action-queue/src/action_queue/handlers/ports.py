"""What the use cases need from the outside world: a repository of actions inside a unit of work
that also stages outgoing messages (outbox) and records processed message ids (inbox).

The SQL implementation lives in ``action_queue.adapters``; unit tests use in-memory fakes.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, Self

from action_queue.domain import ActionStatus, ManualAction
from manual_actions.contracts import ActionType, Envelope


@dataclass(frozen=True)
class ActionFilter:
    """List filters; empty tuples mean "any". ``contact`` matches a substring of name or phone."""

    assignee_user_id: uuid.UUID | None = None
    workflow_id: uuid.UUID | None = None
    contact: str | None = None
    types: tuple[ActionType, ...] = ()
    statuses: tuple[ActionStatus, ...] = ()


@dataclass(frozen=True)
class Cursor:
    """Keyset position: the list continues strictly after (queued_at, id)."""

    queued_at: datetime
    id: uuid.UUID


class ActionRepository(Protocol):
    async def add_if_absent(self, action: ManualAction) -> bool:
        """Insert ``action`` unless an action with its id exists; True when inserted."""

    async def tenant_of(self, action_id: uuid.UUID) -> str | None:
        """The tenant owning ``action_id`` (whatever the caller's tenant), None if unknown."""

    async def get(self, tenant: str, action_id: uuid.UUID, *,
                  for_update: bool = False) -> ManualAction | None:
        """The tenant's action; ``for_update`` locks it until the unit of work ends."""

    async def save(self, action: ManualAction) -> None:
        """Persist every mutable field of an action obtained from this repository."""

    async def next_reservable(self, tenant: str, assignee_user_id: uuid.UUID,
                              now: datetime) -> ManualAction | None:
        """Lock and return the assignee's first reservable action by (priority desc, queued_at, id),
        skipping rows another transaction has locked, so concurrent callers get different actions."""

    async def list(self, tenant: str, filters: ActionFilter, *, limit: int,
                   after: Cursor | None) -> Sequence[ManualAction]:
        """Up to ``limit`` matching actions ordered by (queued_at, id), strictly after ``after``."""


class UnitOfWork(Protocol):
    """One database transaction. Leaving the block without ``commit()`` rolls everything back."""

    @property
    def actions(self) -> ActionRepository: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None: ...

    async def commit(self) -> None: ...

    async def publish(self, topic: str, envelope: Envelope[Any]) -> None:
        """Stage ``envelope`` for ``topic``; it is published only if the transaction commits."""

    async def first_time_seen(self, consumer: str, message_id: uuid.UUID) -> bool:
        """Record ``message_id`` as processed; False when it already was (a redelivery)."""


class UnitOfWorkFactory(Protocol):
    def __call__(self) -> UnitOfWork: ...
