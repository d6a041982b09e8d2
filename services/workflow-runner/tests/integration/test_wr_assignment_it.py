"""Assign User against the real PostgreSQL: exact weighted round robin under concurrency (the
state row locked FOR UPDATE), and availability with fallback through the HTTP API."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from wr_harness import Harness

from manual_actions.auth import Role
from workflow_runner.adapters import tables
from workflow_runner.adapters.sql import SqlUnitOfWork
from workflow_runner.domain.assignment import smooth_weighted_pick
from workflow_runner.handlers import handlers
from workflow_runner.handlers.commands import Enroll

pytestmark = pytest.mark.integration


async def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


async def _agents(admin: httpx.AsyncClient, count: int) -> list[str]:
    return [
        (
            await _ok(
                await admin.post(
                    "/v1/users", json={"name": f"Agent {i}", "phone": f"+1415555019{i}", "role": "agent"}
                ),
                201,
            )
        )["id"]
        for i in range(count)
    ]


async def _workflow(admin: httpx.AsyncClient, assign: dict[str, Any], *, with_sms: bool = False) -> str:
    steps: list[dict[str, Any]] = [{"id": "assign", "type": "assign_user"} | assign]
    if with_sms:
        steps.append(
            {"id": "sms1", "type": "manual_sms", "action_name": "Hello", "message": "Hi {{user.name}}"}
        )
    created = await _ok(await admin.post("/v1/workflows", json={"name": "Assign", "steps": steps}), 201)
    await _ok(await admin.post(f"/v1/workflows/{created['id']}/publish"))
    return str(created["id"])


async def test_10000_concurrent_picks_over_5_2_1_are_exact(wr: Harness) -> None:
    tenant = await wr.new_tenant()
    admin = wr.client(await wr.token(tenant, Role.ADMIN))
    a, b, c = await _agents(admin, 3)
    workflow_id = uuid.UUID(await _workflow(admin, {"user_ids": [a, b, c], "weights": [5, 2, 1]}))
    candidates = [(uuid.UUID(a), 5), (uuid.UUID(b), 2), (uuid.UUID(c), 1)]
    picks: Counter[str] = Counter()

    async def worker(count: int) -> None:
        for _ in range(count):
            async with SqlUnitOfWork(wr.service.engine) as uow:
                scores = await uow.round_robin.load(tenant, workflow_id, for_update=True)
                picked = smooth_weighted_pick(scores.setdefault("assign", {}), candidates)
                await uow.round_robin.save(tenant, workflow_id, scores)
                await uow.commit()
            picks[str(picked)] += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(1250) for _ in range(8)))  # 8 connections at once
    print(f"\n10,000 locked picks in {time.perf_counter() - started:.1f} s")
    assert picks == {a: 6250, b: 2500, c: 1250}


async def test_concurrent_enrollments_share_out_exactly_by_weight(wr: Harness) -> None:
    tenant = await wr.new_tenant()
    admin = wr.client(await wr.token(tenant, Role.ADMIN))
    a, b, c = await _agents(admin, 3)
    workflow_id = uuid.UUID(await _workflow(admin, {"user_ids": [a, b, c], "weights": [5, 2, 1]}))
    rows = [{"name": f"Lead {i}", "external_id": f"lead-{i}"} for i in range(400)]
    assert (await _ok(await admin.post("/v1/contacts/import", json=rows)))["imported"] == 400
    async with wr.service.engine.connect() as conn:
        contact_ids = list(
            (
                await conn.execute(select(tables.contacts.c.id).where(tables.contacts.c.tenant_id == tenant))
            ).scalars()
        )

    async def worker(ids: list[uuid.UUID]) -> None:
        for contact_id in ids:
            await handlers.enroll(wr.service.uow(), Enroll(tenant, workflow_id, contact_id))

    await asyncio.gather(*(worker(contact_ids[i::8]) for i in range(8)))
    async with wr.service.engine.connect() as conn:
        owners = dict(
            (
                await conn.execute(
                    select(tables.contacts.c.owner_user_id, func.count())
                    .where(tables.contacts.c.tenant_id == tenant)
                    .group_by(tables.contacts.c.owner_user_id)
                )
            ).all()
        )
    assert {str(k): v for k, v in owners.items()} == {a: 250, b: 100, c: 50}


async def test_away_users_are_skipped_and_the_fallback_takes_over(wr: Harness) -> None:
    tenant = await wr.new_tenant()
    admin = wr.client(await wr.token(tenant, Role.ADMIN))
    ada, bo, boss = await _agents(admin, 3)
    workflow_id = await _workflow(admin, {"user_ids": [ada, bo], "fallback_user_id": boss}, with_sms=True)
    await _ok(
        await admin.patch(
            f"/v1/users/{ada}",
            json={
                "availability": {
                    "status": "out_of_office",
                    "from": "2020-01-01T00:00:00Z",
                    "until": "2999-01-01T00:00:00Z",
                }
            },
        )
    )

    async def enroll_one(name: str) -> dict[str, Any]:
        contact = await _ok(await admin.post("/v1/contacts", json={"name": name}), 201)
        enrollment = await _ok(
            await admin.post(f"/v1/workflows/{workflow_id}/enrollments", json={"contact_id": contact["id"]}),
            201,
        )
        assigned = next(h for h in enrollment["history"] if h["step_id"] == "assign")
        return assigned

    first, second = await enroll_one("One"), await enroll_one("Two")
    assert [first["detail"]["user_id"], second["detail"]["user_id"]] == [bo, bo]
    assert first["detail"]["unavailable_user_ids"] == [ada]
    await _ok(await admin.patch(f"/v1/users/{bo}", json={"availability": {"status": "away"}}))
    third = await enroll_one("Three")
    assert third["event"] == "user_assigned" and third["detail"]["user_id"] == boss
    assert third["detail"]["reason"].startswith("fallback")
    await _ok(await admin.delete(f"/v1/users/{boss}"), 204)
    fourth = await enroll_one("Four")
    assert fourth["event"] == "assignment_failed"
