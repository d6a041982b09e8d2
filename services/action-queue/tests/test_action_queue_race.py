"""Two users, several devices, racing for the next action (Let's Start) thousands of times against
the real PostgreSQL: no action is ever reserved twice, none is lost, nobody gets another's action.

Each user has one device on the HTTP API and the others on the use case behind it
(``queue.reserve_next`` with the service's real units of work), which keeps the test to seconds:
the race is decided in the database either way. The API's Let's Start is optimistic (no lock, the
version checked when writing, docs/decisions/0026); the direct devices alternate between that and
the transactional unit of work (the candidate locked, SKIP LOCKED), so both ways race each other."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aq_factories import action_queued, wrap
from aq_harness import Harness
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from action_queue.adapters.tables import manual_actions, outbox
from action_queue.domain import ActionStatus, Actor
from action_queue.handlers import queue
from action_queue.handlers.ports import UnitOfWork
from manual_actions.auth import Role
from manual_actions.contracts import topics

pytestmark = pytest.mark.integration

# Actions per user, and how many devices work each queue (the first on HTTP, the others direct).
QUEUES = {"ada": (1_300, 3), "bob": (700, 2)}


def _changed() -> float:
    """Let's Start candidates passed over because they changed while being reserved, so far."""
    return REGISTRY.get_sample_value("action_queue_reservations_total", {"result": "changed"}) or 0.0


async def _work_over_http(client: httpx.AsyncClient, user: uuid.UUID) -> list[str]:
    """Call Let's Start until the queue answers 204; the ids handed out, in order."""
    got: list[str] = []
    while True:
        response = await client.post("/v1/queue/next")
        if response.status_code == 204:
            return got
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "reserved" and body["reserved_by"] == str(user), body
        got.append(str(body["id"]))


async def _work_directly(uow: UnitOfWork, tenant: str, user: uuid.UUID) -> list[str]:
    actor = Actor(tenant, user, supervisor=False)
    got: list[str] = []
    while (action := await queue.reserve_next(uow, actor, now=datetime.now(UTC))) is not None:
        assert action.status is ActionStatus.RESERVED and action.reserved_by == user
        got.append(str(action.id))
    return got


async def test_devices_and_users_racing_for_the_next_action_never_share_one(aq: Harness) -> None:
    tenant = await aq.new_tenant()
    users = {name: uuid.uuid4() for name in QUEUES}
    base = datetime.now(UTC) - timedelta(days=1)
    queued: dict[str, set[str]] = {}
    pending = []
    for name, (count, _) in QUEUES.items():
        # A few priorities and ages, so every caller keeps aiming at the same head of the queue.
        events = [action_queued(assignee=users[name], priority=i % 4,
                                queued_at=base + timedelta(seconds=i % 97)) for i in range(count)]
        queued[name] = {str(e.action_id) for e in events}
        for event in events:
            envelope = wrap(event, tenant=tenant, subject=event.action_id)
            pending.append(await aq.producer.send(topics.ACTION_LIFECYCLE, envelope.to_json_bytes(),
                                                  key=envelope.subject.encode(),
                                                  headers=envelope.kafka_headers()))
    await aq.wait_consumed(*await asyncio.gather(*pending), within=60)

    changed_before = _changed()
    devices: list[tuple[str, Coroutine[Any, Any, list[str]]]] = []
    clients: list[httpx.AsyncClient] = []
    for name, (_, device_count) in QUEUES.items():
        clients.append(aq.client(await aq.token(tenant, Role.AGENT, users[name])))
        devices.append((name, _work_over_http(clients[-1], users[name])))
        kinds = [aq.service.uow, aq.service.uow.claiming()]
        devices += [(name, _work_directly(kinds[i % 2](), tenant, users[name]))
                    for i in range(device_count - 1)]
    try:
        results = await asyncio.gather(*(work for _, work in devices))
    finally:
        for client in clients:
            await client.aclose()

    everything = [action_id for got in results for action_id in got]
    duplicates = [action_id for action_id, n in Counter(everything).items() if n > 1]
    assert duplicates == [], f"{len(duplicates)} actions were handed out twice"
    for name in QUEUES:
        handed_to = {action_id for (owner, _), got in zip(devices, results, strict=True) if owner == name
                     for action_id in got}
        assert handed_to == queued[name], f"{name}: lost or foreign actions"
    # Every device took part in the race (otherwise it proved nothing about concurrency), and the
    # optimistic devices did lose races: candidates changed between their read and their write.
    assert all(len(got) > 0 for got in results), [len(got) for got in results]
    assert _changed() > changed_before

    async with aq.service.uow.engine.connect() as conn:
        states = dict((await conn.execute(
            select(manual_actions.c.status, func.count()).where(manual_actions.c.tenant_id == tenant)
            .group_by(manual_actions.c.status))).all())
        reserved_events = (await conn.execute(
            select(outbox.c.key, func.count()).where(outbox.c.tenant == tenant,
                                                     outbox.c.value["type"].astext == "ActionReserved")
            .group_by(outbox.c.key))).all()
    assert states == {"reserved": len(everything)}
    # One ActionReserved per action: the state change and its event committed together, once.
    assert len(reserved_events) == len(everything) and {n for _, n in reserved_events} == {1}
