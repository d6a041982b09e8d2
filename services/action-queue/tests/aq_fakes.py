"""In-memory fakes of the repository and unit of work, for unit tests of the handlers only."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from action_queue.domain import ActionStatus, ManualAction
from action_queue.domain.checks import ContactState
from action_queue.domain.people import QueueSettings, UserState
from action_queue.handlers.ports import (
    DEFAULT_SORT,
    ActionChanged,
    ActionFilter,
    ActionSummary,
    BulkRequest,
    BulkStatus,
    Cursor,
    NewAction,
    Sort,
)
from manual_actions.contracts import ActionType, Envelope


def _after(sort: Sort, action: ManualAction, cursor: Cursor) -> bool:
    for (_, descending), mine, theirs in zip(sort.columns, sort.values(action), cursor.values, strict=True):
        if mine != theirs:
            return bool(mine < theirs) if descending else bool(mine > theirs)
    return False


class FakeRepository:
    def __init__(self, store: dict[uuid.UUID, ManualAction]) -> None:
        self._store = store
        # Actions next_reservable returned -> their version then: commit checks them (ActionChanged).
        self.read_versions: dict[uuid.UUID, int] = {}

    async def add_if_absent(self, action: ManualAction) -> bool:
        if action.id in self._store:
            return False
        self._store[action.id] = copy.deepcopy(action)
        return True

    async def tenant_of(self, action_id: uuid.UUID) -> str | None:
        action = self._store.get(action_id)
        return action.tenant if action else None

    async def add_queued_if_absent(self, actions: Sequence[NewAction]) -> set[uuid.UUID]:
        return {a.event.action_id for a in actions
                if await self.add_if_absent(ManualAction.from_queued(a.tenant, a.event, a.sequence))}

    async def tenants_of(self, action_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
        return {i: self._store[i].tenant for i in action_ids if i in self._store}

    async def get(self, tenant: str, action_id: uuid.UUID, *,
                  for_update: bool = False) -> ManualAction | None:
        action = self._store.get(action_id)
        return copy.deepcopy(action) if action and action.tenant == tenant else None

    async def save(self, action: ManualAction) -> None:
        assert action.id in self._store
        self._store[action.id] = copy.deepcopy(action)

    async def next_reservable(self, tenant: str, assignee_user_id: uuid.UUID, now: datetime, *,
                              passing_over: Collection[uuid.UUID] = ()) -> ManualAction | None:
        candidates = [a for a in self._store.values() if a.tenant == tenant
                      and a.assignee_user_id == assignee_user_id and a.is_reservable(now)
                      and a.id not in passing_over]
        candidates.sort(key=lambda a: a.queue_key())
        if not candidates:
            return None
        self.read_versions[candidates[0].id] = candidates[0].version
        return copy.deepcopy(candidates[0])

    async def due(self, now: datetime, *, limit: int, tenant: str | None = None) -> Sequence[ManualAction]:
        found = [a for a in self._store.values() if tenant in (None, a.tenant)
                 and (a.expiry_passed(now) or a.lease_lapsed(now) or a.snooze_over(now) or a.sms_due(now))]
        return [copy.deepcopy(a) for a in found[:limit]]

    async def list(self, tenant: str, filters: ActionFilter, *, limit: int, after: Cursor | None,
                   sort: Sort = DEFAULT_SORT) -> Sequence[ActionSummary]:
        found = sorted((a for a in self._store.values() if a.tenant == tenant and filters.matches(a)),
                       key=sort.sort_key)
        if after is not None:
            # strictly after the cursor's position in this order
            found = [a for a in found if _after(sort, a, after)]
        return [ActionSummary.of(a) for a in found[:limit]]

    async def counts(self, tenant: str, filters: ActionFilter) -> dict[tuple[ActionStatus, ActionType], int]:
        unfiltered = replace(filters, statuses=())
        out: dict[tuple[ActionStatus, ActionType], int] = {}
        for a in self._store.values():
            if a.tenant == tenant and unfiltered.matches(a):
                out[(a.status, a.type)] = out.get((a.status, a.type), 0) + 1
        return out

    async def matching_ids(self, tenant: str, filters: ActionFilter, *, after: uuid.UUID | None,
                           limit: int) -> Sequence[uuid.UUID]:
        ids = sorted(a.id for a in self._store.values() if a.tenant == tenant and filters.matches(a)
                     and (after is None or a.id > after))
        return ids[:limit]

    async def get_many(self, tenant: str, ids: Sequence[uuid.UUID]) -> Sequence[ManualAction]:
        return [copy.deepcopy(self._store[i]) for i in sorted(ids)
                if i in self._store and self._store[i].tenant == tenant]

    async def save_many(self, actions: Sequence[ManualAction]) -> None:
        for action in actions:
            await self.save(action)


class FakeBulkStore:
    def __init__(self, store: dict[tuple[str, str], BulkRequest]) -> None:
        self._store = store

    async def add_if_absent(self, request: BulkRequest) -> BulkRequest:
        self._store.setdefault((request.tenant, request.request_id), copy.deepcopy(request))
        return copy.deepcopy(self._store[(request.tenant, request.request_id)])

    async def get(self, tenant: str, request_id: str) -> BulkRequest | None:
        found = self._store.get((tenant, request_id))
        return copy.deepcopy(found) if found else None

    async def next_running(self) -> BulkRequest | None:
        running = sorted((r for r in self._store.values() if r.status is BulkStatus.RUNNING),
                         key=lambda r: r.created_at)
        return copy.deepcopy(running[0]) if running else None

    async def save(self, request: BulkRequest) -> None:
        self._store[(request.tenant, request.request_id)] = copy.deepcopy(request)


class FakeContacts:
    def __init__(self, store: dict[tuple[str, uuid.UUID], ContactState]) -> None:
        self._store = store

    async def get(self, tenant: str, contact_id: uuid.UUID) -> ContactState | None:
        return self._store.get((tenant, contact_id))

    async def upsert(self, tenant: str, contact_id: uuid.UUID, state: ContactState) -> bool:
        current = self._store.get((tenant, contact_id))
        if current is not None and current.version >= state.version:
            return False
        self._store[(tenant, contact_id)] = state
        return True


class FakeUsers:
    def __init__(self, store: dict[tuple[str, uuid.UUID], UserState],
                 actions: dict[uuid.UUID, ManualAction]) -> None:
        self._store = store
        self._actions = actions

    async def get(self, tenant: str, user_id: uuid.UUID) -> UserState | None:
        return self._store.get((tenant, user_id))

    async def upsert(self, tenant: str, state: UserState) -> bool:
        current = self._store.get((tenant, state.user_id))
        if current is not None and current.version >= state.version:
            return False
        self._store[(tenant, state.user_id)] = state
        return True

    async def team(self, tenant: str, team_id: uuid.UUID) -> Sequence[UserState]:
        return sorted((u for (t, _), u in self._store.items() if t == tenant and u.team_id == team_id
                       and not u.deleted), key=lambda u: u.user_id)

    async def out_with_queued(self, now: datetime, *, limit: int,
                              after: tuple[str, uuid.UUID] | None = None) -> Sequence[tuple[str, UserState]]:
        found = [(t, u) for (t, _), u in sorted(self._store.items(), key=lambda kv: (kv[0][0], kv[0][1]))
                 if (after is None or (t, u.user_id) > after)
                 and u.availability in ("away", "out_of_office") and not u.deleted
                 and (u.unavailable_from is None or u.unavailable_from <= now)
                 and (u.unavailable_until is None or u.unavailable_until > now)
                 and any(a.tenant == t and a.assignee_user_id == u.user_id and a.status is ActionStatus.QUEUED
                         for a in self._actions.values())]
        return found[:limit]


class FakeSettings:
    def __init__(self, store: dict[str, QueueSettings]) -> None:
        self._store = store

    async def get(self, tenant: str) -> QueueSettings:
        return self._store.get(tenant, QueueSettings())

    async def put(self, tenant: str, settings: QueueSettings, by: uuid.UUID | None) -> QueueSettings:
        stored = replace(settings, version=self._store.get(tenant, QueueSettings()).version + 1)
        self._store[tenant] = stored
        return stored


class FakeUnitOfWork:
    """Changes become visible in ``store``/``outbox``/``inbox`` only on commit, like a transaction."""

    def __init__(self) -> None:
        self.store: dict[uuid.UUID, ManualAction] = {}
        self.outbox: list[tuple[str, Envelope[Any]]] = []
        self.inbox: set[tuple[str, uuid.UUID]] = set()
        self.bulk_requests: dict[tuple[str, str], BulkRequest] = {}
        self.contact_states: dict[tuple[str, uuid.UUID], ContactState] = {}
        self.user_states: dict[tuple[str, uuid.UUID], UserState] = {}
        self.tenant_settings: dict[str, QueueSettings] = {}
        self.commits = 0

    @property
    def actions(self) -> FakeRepository:
        return self._repo

    async def __aenter__(self) -> Self:
        self._after_commit: list[Callable[[], None]] = []
        self._work = copy.deepcopy(self.store)
        self._outbox: list[tuple[str, Envelope[Any]]] = []
        self._inbox: set[tuple[str, uuid.UUID]] = set(self.inbox)
        self._repo = FakeRepository(self._work)
        self._bulk_work = copy.deepcopy(self.bulk_requests)
        self._bulk = FakeBulkStore(self._bulk_work)
        self._contacts_work = dict(self.contact_states)
        self._contacts = FakeContacts(self._contacts_work)
        self._users_work = dict(self.user_states)
        self._users = FakeUsers(self._users_work, self._work)
        self._settings_work = dict(self.tenant_settings)
        self._settings = FakeSettings(self._settings_work)
        return self

    @property
    def users(self) -> FakeUsers:
        return self._users

    @property
    def settings(self) -> FakeSettings:
        return self._settings

    @property
    def contacts(self) -> FakeContacts:
        return self._contacts

    @property
    def bulk(self) -> FakeBulkStore:
        return self._bulk

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        return None

    def on_commit(self, callback: Callable[[], None]) -> None:
        self._after_commit.append(callback)

    async def commit(self) -> None:
        for action_id, read in self._repo.read_versions.items():
            # Written by this unit of work, but changed in the store meanwhile (see ``SqlUnitOfWork``).
            if self._work[action_id].version != read and self.store[action_id].version != read:
                raise ActionChanged(action_id)
        self.store = self._work
        self.bulk_requests = self._bulk_work
        self.contact_states = self._contacts_work
        self.user_states = self._users_work
        self.tenant_settings = self._settings_work
        self.outbox.extend(self._outbox)
        self.inbox = self._inbox
        self.commits += 1
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            callback()

    async def publish(self, topic: str, envelope: Envelope[Any]) -> None:
        self._outbox.append((topic, envelope))

    async def publish_many(self, messages: Sequence[tuple[str, Envelope[Any]]]) -> None:
        self._outbox.extend(messages)

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
