"""Bulk enrollment survives the real workflow-runner process being killed: SIGKILL right after a
chunk committed (a drip run then keeps its stored pace across the restart) and right before the
commit (the chunk is done again after the restart). Nobody is enrolled twice, nobody is lost.

Runs the service as its own OS process (``devstack.processes``) with crash points
(``manual_actions.faults``: ``bulk.after-commit``, ``bulk.before-commit``) against the session's
Kafka and PostgreSQL, in databases of its own.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from devstack.processes import ServiceProcesses, free_ports
from manual_actions.auth import IdentityStore, Role
from manual_actions.db import asyncpg_dsn, create_engine
from manual_actions.faults import CRASH_AT_ENV
from workflow_runner.handlers.bulk import BULK_AFTER_COMMIT, BULK_BEFORE_COMMIT

pytestmark = pytest.mark.integration

SERVICE = "workflow-runner"


@pytest.fixture(scope="module")
def runner(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcesses]:
    processes = ServiceProcesses(
        stack,
        Path(tmp_path_factory.mktemp("wr-bulk-restart")),
        ports={SERVICE: free_ports(1)[0]},
        database_prefix=f"wrbulk_{uuid.uuid4().hex[:6]}_",
    )
    try:
        yield processes
    finally:
        processes.stop()


@pytest.fixture(scope="module")
def admin(runner: ServiceProcesses) -> Iterator[httpx.Client]:
    """An admin client of a fresh tenant (the service creates the identity schema at start)."""
    runner.start([SERVICE])

    async def issue() -> str:
        engine = create_engine(runner.env_for(SERVICE)["IDENTITY_DATABASE_URL"], pool_size=1)
        try:
            identity = IdentityStore(engine)
            tenant = f"bulk-{uuid.uuid4().hex[:8]}"
            await identity.create_tenant(tenant, "Bulk restart")
            return await identity.issue_token(tenant, Role.ADMIN, None, label="bulk restart test")
        finally:
            await engine.dispose()

    token = asyncio.run(issue())
    with httpx.Client(
        base_url=runner.url(SERVICE), headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as c:
        yield c


@pytest.fixture(scope="module")
def db(runner: ServiceProcesses, admin: httpx.Client) -> str:
    """The service's database (asyncpg DSN); created by the service at its first start."""
    return asyncpg_dsn(make_url(runner.env_for(SERVICE)["DATABASE_URL"]))


def _fetch(dsn: str, query: str, *args: Any) -> list[Any]:
    async def run() -> list[Any]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


def _setup(admin: httpx.Client, count: int) -> tuple[str, list[str]]:
    agent = admin.post(
        "/v1/users", json={"name": "Alex Agent", "phone": "+14155550190", "role": "agent"}
    ).json()
    workflow = admin.post(
        "/v1/workflows",
        json={
            "name": "Drip",
            "steps": [
                {"id": "assign", "type": "assign_user", "user_ids": [agent["id"]]},
                {
                    "id": "sms1",
                    "type": "manual_sms",
                    "action_name": "Hi",
                    "message": "Hi {{contact.first_name}}",
                },
            ],
        },
    ).json()
    assert admin.post(f"/v1/workflows/{workflow['id']}/publish").status_code == 200
    tag = uuid.uuid4().hex[:8]
    contacts = [
        admin.post(
            "/v1/contacts", json={"name": f"Contact {i}", "phone": f"+1415555{2000 + i}", "tags": [tag]}
        ).json()["id"]
        for i in range(count)
    ]
    return workflow["id"], contacts


def _restart_with_crash_at(runner: ServiceProcesses, point: str) -> None:
    runner.kill(SERVICE, signal.SIGTERM)
    runner.start([SERVICE], env={CRASH_AT_ENV: point})


def _wait_done(admin: httpx.Client, run_id: str, within: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + within
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = admin.get(f"/v1/bulk-enrollments/{run_id}").json()
        if body["status"] == "done":
            return body
        time.sleep(0.2)
    raise AssertionError(f"bulk enrollment not done in time: {body}")


def _enrollments(db: str, workflow_id: str) -> list[tuple[uuid.UUID, Any]]:
    rows = _fetch(
        db,
        "SELECT contact_id, created_at FROM enrollments WHERE workflow_id = $1 ORDER BY created_at",
        uuid.UUID(workflow_id),
    )
    return [(row[0], row[1]) for row in rows]


def _queued(db: str, workflow_id: str) -> list[str]:
    rows = _fetch(
        db,
        "SELECT value->'data'->'contact'->>'contact_id' FROM outbox "
        "WHERE value->>'type' = 'ActionQueued' AND value->'data'->>'workflow_id' = $1",
        workflow_id,
    )
    return [row[0] for row in rows]


def test_drip_killed_right_after_a_chunk_commits_resumes_at_its_pace(
    runner: ServiceProcesses, admin: httpx.Client, db: str
) -> None:
    workflow_id, contacts = _setup(admin, 7)
    _restart_with_crash_at(runner, BULK_AFTER_COMMIT)
    accepted = admin.post(
        f"/v1/workflows/{workflow_id}/bulk-enrollments",
        json={
            "request_id": "drip-kill-after",
            "target": {"contact_ids": contacts},
            "delivery": {"method": "drip", "batch_size": 3, "interval_seconds": 3},
        },
    )
    assert accepted.status_code == 202, accepted.text
    assert runner.wait_exit(SERVICE) == -signal.SIGKILL, "the crash point was not reached"
    # The first batch committed before the kill, with the next batch's due time.
    assert len(_enrollments(db, workflow_id)) == 3

    runner.start([SERVICE])
    run = _wait_done(admin, accepted.json()["id"])
    assert (run["enrolled"], run["skipped_total"]) == (7, 0)
    enrolled = _enrollments(db, workflow_id)
    assert sorted(str(c) for c, _ in enrolled) == sorted(contacts)  # each contact exactly once
    assert sorted(_queued(db, workflow_id)) == sorted(contacts)  # one ActionQueued each
    times = [at for _, at in enrolled]
    # Batches of 3, 3, 1, each at least the interval after the previous one, across the restart.
    assert (times[3] - times[2]).total_seconds() >= 3
    assert (times[6] - times[5]).total_seconds() >= 3


def test_killed_right_before_a_chunk_commits_enrolls_nobody_twice(
    runner: ServiceProcesses, admin: httpx.Client, db: str
) -> None:
    workflow_id, contacts = _setup(admin, 5)
    _restart_with_crash_at(runner, BULK_BEFORE_COMMIT)
    accepted = admin.post(
        f"/v1/workflows/{workflow_id}/bulk-enrollments",
        json={"request_id": "kill-before", "target": {"contact_ids": contacts}},
    )
    assert accepted.status_code == 202, accepted.text
    assert runner.wait_exit(SERVICE) == -signal.SIGKILL, "the crash point was not reached"
    assert _enrollments(db, workflow_id) == []  # the chunk rolled back with the process

    runner.start([SERVICE])
    run = _wait_done(admin, accepted.json()["id"])
    assert run["enrolled"] == 5
    assert sorted(str(c) for c, _ in _enrollments(db, workflow_id)) == sorted(contacts)
    assert sorted(_queued(db, workflow_id)) == sorted(contacts)
