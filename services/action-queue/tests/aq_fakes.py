"""In-memory fakes of the repository and unit of work, for unit tests of the handlers only."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from action_queue.domain import ActionStatus, ManualAction
from action_queue.handlers.ports import ActionFilter, Cursor
from manual_actions.contracts import Envelope


class FakeRepository:
    def __init__(self, store: dict[uuid.UUID, ManualAction]) -> None:
        self._store = store

    async def add_if_absent(self, action: ManualAction) -> bool:
        if action.id in self._store:
            return False
        self._store[action.id] = copy.deepcopy(action)
        return True

    async def tenant_of(self, action_id: uuid.UUID) -> str | None:
        action = self._store.get(action_id)
        return action.tenant if action else None

    async def get(self, tenant: str, action_id: uuid.UUID, *,
                  for_update: bool = False) -> ManualAction | None:
        action = self._store.get(action_id)
        return copy.deepcopy(action) if action and action.tenant == tenant else None

    async def save(self, action: ManualAction) -> None:
        assert action.id in self._store
        self._store[action.id] = copy.deepcopy(action)

    async def next_reservable(self, tenant: str, assignee_user_id: uuid.UUID,
                              now: datetime) -> ManualAction | None:
        candidates = [a for a in self._store.values() if a.tenant == tenant
                      and a.assignee_user_id == assignee_user_id and a.is_reservable(now)]
        candidates.sort(key=lambda a: (-a.priority, a.queued_at, a.id))
        return copy.deepcopy(candidates[0]) if candidates else None

    async def list(self, tenant: str, filters: ActionFilter, *, limit: int,
                   after: Cursor | None) -> Sequence[ManualAction]:
        def matches(a: ManualAction) -> bool:
            return (a.tenant == tenant
                    and filters.assignee_user_id in (None, a.assignee_user_id)
                    and filters.workflow_id in (None, a.workflow_id)
                    and (not filters.types or a.type in filters.types)
                    and (not filters.statuses or a.status in filters.statuses)
                    and (not filters.contact or filters.contact.lower() in a.contact.name.lower()
                         or filters.contact in (a.contact.phone or ""))
                    and (after is None or (a.queued_at, a.id) > (after.queued_at, after.id)))

        found = sorted((a for a in self._store.values() if matches(a)), key=lambda a: (a.queued_at, a.id))
        return [copy.deepcopy(a) for a in found[:limit]]


class FakeUnitOfWork:
    """Changes become visible in ``store``/``outbox``/``inbox`` only on commit, like a transaction."""

    def __init__(self) -> None:
        self.store: dict[uuid.UUID, ManualAction] = {}
        self.outbox: list[tuple[str, Envelope[Any]]] = []
        self.inbox: set[tuple[str, uuid.UUID]] = set()
        self.commits = 0

    @property
    def actions(self) -> FakeRepository:
        return self._repo

    async def __aenter__(self) -> Self:
        self._work = copy.deepcopy(self.store)
        self._outbox: list[tuple[str, Envelope[Any]]] = []
        self._inbox: set[tuple[str, uuid.UUID]] = set(self.inbox)
        self._repo = FakeRepository(self._work)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        return None

    async def commit(self) -> None:
        self.store = self._work
        self.outbox.extend(self._outbox)
        self.inbox = self._inbox
        self.commits += 1

    async def publish(self, topic: str, envelope: Envelope[Any]) -> None:
        self._outbox.append((topic, envelope))

    async def first_time_seen(self, consumer: str, message_id: uuid.UUID) -> bool:
        if (consumer, message_id) in self._inbox:
            return False
        self._inbox.add((consumer, message_id))
        return True

    def statuses(self) -> dict[uuid.UUID, ActionStatus]:
        return {a.id: a.status for a in self.store.values()}

    def __call__(self) -> Self:
        """Act as its own factory, so every use case shares this one in-memory store."""
        return self
