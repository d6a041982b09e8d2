"""In-memory repositories and unit of work for driving the real handlers in unit tests.

The fake keeps transactional behaviour that the handlers rely on: changes made inside a unit of
work become visible (and staged messages become "published") only on commit.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from manual_actions.contracts import Envelope, decode_document, topics
from workflow_runner.domain.directory import Team
from workflow_runner.domain.enrollments import Enrollment, ManualAction
from workflow_runner.domain.people import Contact, User
from workflow_runner.domain.workflows import Workflow


@dataclass
class State:
    teams: dict[tuple[str, uuid.UUID], Team] = field(default_factory=dict)
    users: dict[tuple[str, uuid.UUID], User] = field(default_factory=dict)
    contacts: dict[tuple[str, uuid.UUID], Contact] = field(default_factory=dict)
    workflows: dict[tuple[str, uuid.UUID], Workflow] = field(default_factory=dict)
    enrollments: dict[tuple[str, uuid.UUID], Enrollment] = field(default_factory=dict)
    actions: dict[tuple[str, uuid.UUID], ManualAction] = field(default_factory=dict)
    round_robin: dict[tuple[str, uuid.UUID], dict[str, dict[str, int]]] = field(default_factory=dict)
    outbox: list[tuple[str, Envelope[Any]]] = field(default_factory=list)
    inbox: set[tuple[str, uuid.UUID]] = field(default_factory=set)


class _Repo:
    def __init__(self, uow: FakeUnitOfWork, name: str) -> None:
        self._uow = uow
        self._name = name

    @property
    def rows(self) -> dict[tuple[str, uuid.UUID], Any]:
        return getattr(self._uow.working, self._name)  # type: ignore[no-any-return]

    async def add(self, item: Any) -> None:
        self.rows[(item.tenant, item.id)] = copy.deepcopy(item)

    async def get(
        self, tenant: str, item_id: uuid.UUID, *, for_update: bool = False, include_deleted: bool = False
    ) -> Any:
        found = self.rows.get((tenant, item_id))
        if found is not None and not include_deleted and getattr(found, "deleted_at", None) is not None:
            return None
        return copy.deepcopy(found)

    async def save(self, item: Any) -> None:
        assert (item.tenant, item.id) in self.rows
        self.rows[(item.tenant, item.id)] = copy.deepcopy(item)

    update = save

    async def list(
        self,
        tenant: str,
        *,
        limit: int,
        offset: int = 0,
        after: Any = None,
        filters: Any = None,
        **conditions: Any,
    ) -> Sequence[Any]:
        """Oldest first like the SQL repositories; ``filters`` (ContactFilter) only by owner/tag."""
        if filters is not None:
            conditions["owner_user_id"] = filters.owner_user_id
        mine = sorted(
            (
                copy.deepcopy(v)
                for (t, _), v in self.rows.items()
                if t == tenant
                and getattr(v, "deleted_at", None) is None
                and all(value is None or getattr(v, name) == value for name, value in conditions.items())
                and (filters is None or filters.tag is None or filters.tag in v.tags)
            ),
            key=lambda v: (v.created_at, v.id),
        )
        if after is not None:
            mine = [v for v in mine if (v.created_at, v.id) > after]
        return mine[offset : offset + limit]

    async def get_many(
        self, tenant: str, ids: Collection[uuid.UUID], *, include_deleted: bool = False
    ) -> dict[uuid.UUID, Any]:
        found = {i: copy.deepcopy(self.rows[(tenant, i)]) for i in ids if (tenant, i) in self.rows}
        return {i: v for i, v in found.items() if include_deleted or getattr(v, "deleted_at", None) is None}

    async def get_by_name(self, tenant: str, name: str) -> Any:
        return next(
            (copy.deepcopy(v) for (t, _), v in self.rows.items() if t == tenant and v.name == name), None
        )

    async def delete(self, tenant: str, item_id: uuid.UUID) -> None:
        del self.rows[(tenant, item_id)]

    async def count_members(self, tenant: str, team_id: uuid.UUID) -> int:
        return sum(
            1
            for (t, _), u in self._uow.working.users.items()
            if t == tenant and u.team_id == team_id and u.deleted_at is None
        )

    async def upsert_many(self, contacts: Sequence[Any], fields_present: Collection[str]) -> list[Any]:
        """Same rule as the SQL repository, with every field of an existing contact replaced by
        the import's value only when ``fields_present`` names it."""
        stored = []
        for contact in contacts:
            existing = next(
                (
                    c
                    for (t, _), c in self.rows.items()
                    if t == contact.tenant and contact.external_id and c.external_id == contact.external_id
                ),
                None,
            )
            if existing is None:
                self.rows[(contact.tenant, contact.id)] = copy.deepcopy(contact)
                stored.append(copy.deepcopy(contact))
                continue
            updated = copy.deepcopy(existing)
            for name in fields_present:
                if name == "name":
                    updated.first_name, updated.last_name = contact.first_name, contact.last_name
                setattr(updated, name, copy.deepcopy(getattr(contact, name)))
            updated.version += 1
            updated.deleted_at = None
            updated.updated_at = contact.updated_at
            self.rows[(updated.tenant, updated.id)] = updated
            stored.append(copy.deepcopy(updated))
        return stored

    async def external_id_taken(self, tenant: str, external_id: str, *, other_than: uuid.UUID | None) -> bool:
        return any(
            t == tenant and c.external_id == external_id and c.id != other_than
            for (t, _), c in self.rows.items()
        )

    async def running_for(self, tenant: str, workflow_id: uuid.UUID, contact_id: uuid.UUID) -> Any:
        for (t, _), e in self.rows.items():
            if t == tenant and e.workflow_id == workflow_id and e.contact_id == contact_id and e.is_running:
                return copy.deepcopy(e)
        return None


class _RoundRobin:
    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow

    async def ensure(self, tenant: str, workflow_id: uuid.UUID, step_ids: Collection[str]) -> None:
        positions = self._uow.working.round_robin.setdefault((tenant, workflow_id), {})
        for step_id in step_ids:
            positions.setdefault(step_id, {})

    async def load(
        self, tenant: str, workflow_id: uuid.UUID, *, for_update: bool = True
    ) -> dict[str, dict[str, int]]:
        return copy.deepcopy(self._uow.working.round_robin.get((tenant, workflow_id), {}))

    async def save(self, tenant: str, workflow_id: uuid.UUID, scores: Any) -> None:
        self._uow.working.round_robin[(tenant, workflow_id)] = copy.deepcopy(dict(scores))


class FakeUnitOfWork:
    def __init__(self) -> None:
        self.committed = State()
        self.working = State()
        self.commits = 0
        self.teams = _Repo(self, "teams")
        self.users = _Repo(self, "users")
        self.contacts = _Repo(self, "contacts")
        self.workflows = _Repo(self, "workflows")
        self.enrollments = _Repo(self, "enrollments")
        self.actions = _Repo(self, "actions")
        self.round_robin = _RoundRobin(self)

    @property
    def published(self) -> list[tuple[str, Envelope[Any]]]:
        """Committed messages on the action-lifecycle topic (directory events: ``published_on``)."""
        return self.published_on(topics.ACTION_LIFECYCLE)

    def published_on(self, topic: str) -> list[tuple[str, Envelope[Any]]]:
        return [(t, e) for t, e in self.committed.outbox if t == topic]

    async def __aenter__(self) -> Self:
        self.working = copy.deepcopy(self.committed)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.rollback()

    async def commit(self) -> None:
        self.committed = copy.deepcopy(self.working)
        self.commits += 1

    async def rollback(self) -> None:
        self.working = copy.deepcopy(self.committed)

    async def publish(self, topic: str, envelope: Envelope[Any]) -> None:
        self.working.outbox.append((topic, envelope))

    async def publish_documents(self, topic: str, documents: Sequence[dict[str, Any]]) -> None:
        self.working.outbox.extend((topic, decode_document(d)) for d in documents)

    async def first_time_seen(self, consumer: str, message_id: uuid.UUID) -> bool:
        if (consumer, message_id) in self.working.inbox:
            return False
        self.working.inbox.add((consumer, message_id))
        return True
