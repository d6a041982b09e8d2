"""The real workflow-runner process is SIGKILLed inside its timer loop; after a restart every
enrollment moved on exactly once: no action duplicated, none lost.

Crash points (``handlers.timers``): ``timer.after-claim`` (due timers locked, nothing changed: the
restarted process must fire them) and ``timer.after-commit`` (the enrollments moved and their
timers are marked fired: the restarted process must not fire them again; timers of the same
tenant not in that batch are fired after the restart). The process runs on its own database
and consumer group, so it shares nothing with the in-process harness or the end-to-end services.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from sqlalchemy import func, select, update

from devstack.processes import ServiceFailedToStart, ServiceProcesses
from devstack.testing import eventually
from manual_actions import faults
from manual_actions.auth import IdentityStore, Role
from manual_actions.contracts import topics
from manual_actions.db import create_engine
from workflow_runner.adapters import tables
from workflow_runner.handlers.timers import TIMER_AFTER_CLAIM, TIMER_AFTER_COMMIT

pytestmark = pytest.mark.integration

SERVICE = "workflow-runner"
PREFIX = "wrcrash_"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def processes(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcesses]:
    run_dir = Path(tmp_path_factory.mktemp("wr-timer-crash"))
    started = ServiceProcesses(
        stack,
        run_dir,
        ports={SERVICE: _free_port()},
        database_prefix=PREFIX,
        extra_env={"CONSUMER_GROUP_ID": f"wr-timer-crash-{uuid.uuid4().hex[:8]}", "TIMER_INTERVAL_MS": "100"},
    )
    try:
        started.start([SERVICE])
        yield started
    finally:
        started.stop()


async def _admin_token(processes: ServiceProcesses) -> tuple[str, str]:
    engine = create_engine(processes.env_for(SERVICE)["IDENTITY_DATABASE_URL"])
    try:
        identity = IdentityStore(engine)
        await identity.create_schema()
        tenant = f"crash-{uuid.uuid4().hex[:10]}"
        await identity.create_tenant(tenant, tenant)
        return await identity.issue_token(tenant, Role.ADMIN, None, label="timer crash test"), tenant
    finally:
        await engine.dispose()


class TopicTail:
    """Records every JSON envelope on some topics from the beginning, in a background task."""

    def __init__(self, bootstrap: str, *names: str) -> None:
        self.reader = AIOKafkaConsumer(
            *names,
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        self.docs: list[dict[str, Any]] = []
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.reader.start()

        async def record() -> None:
            while True:
                batch = await self.reader.getmany(timeout_ms=200)
                for records in batch.values():
                    for record in records:
                        if record.value is not None:
                            with contextlib.suppress(ValueError):
                                self.docs.append(json.loads(record.value))

        self.task = asyncio.create_task(record())

    async def read(self) -> list[dict[str, Any]]:
        return list(self.docs)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.reader.stop()


WAIT_STEPS = [
    {"id": "pause", "type": "wait", "duration": "P1D"},
    {"id": "sms1", "type": "manual_sms", "action_name": "After the pause", "message": "Hi"},
]
TIMEOUT_STEPS = [
    {
        "id": "call1",
        "type": "manual_call",
        "action_name": "Call",
        "timeout": {"after": "P1D", "then": "sms_late", "action": "cancel"},
    },
    {"id": "sms_late", "type": "manual_sms", "action_name": "Late", "message": "Sorry we missed you"},
]
EXPECTED = {"wait": ["sms1"], "timeout": ["call1", "sms_late"]}


@pytest.mark.parametrize("point", [TIMER_AFTER_CLAIM, TIMER_AFTER_COMMIT])
async def test_sigkill_in_the_timer_loop_moves_each_enrollment_exactly_once(
    point: str, stack: Any, processes: ServiceProcesses
) -> None:
    """Three enrollments wait (P1D) and three wait on a call with a P1D timeout; with the service
    stopped their timers are made due, then it starts with the crash point and dies at it."""
    token, tenant = await _admin_token(processes)
    tail = TopicTail(stack.kafka_bootstrap, topics.ACTION_LIFECYCLE, topics.ACTION_COMMANDS)
    await tail.start()
    try:
        api = httpx.AsyncClient(
            base_url=processes.url(SERVICE), headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        kinds: dict[str, str] = {}
        for kind, steps in (("wait", WAIT_STEPS), ("timeout", TIMEOUT_STEPS)):
            workflow = (await api.post("/v1/workflows", json={"name": kind, "steps": steps})).json()
            assert (await api.post(f"/v1/workflows/{workflow['id']}/publish")).status_code == 200
            for i in range(3):
                phone = f"+1415555{7000 + len(kinds)}"
                contact = (await api.post("/v1/contacts", json={"name": f"Crash {i}", "phone": phone})).json()
                enrolled = await api.post(
                    f"/v1/workflows/{workflow['id']}/enrollments", json={"contact_id": contact["id"]}
                )
                assert enrolled.status_code == 201, enrolled.text
                kinds[enrolled.json()["id"]] = kind

        processes.kill(SERVICE, signal.SIGTERM)
        engine = create_engine(processes.env_for(SERVICE)["DATABASE_URL"])
        t = tables.timers.c
        try:
            async with engine.begin() as conn:
                due = await conn.execute(
                    update(tables.timers).where(t.tenant_id == tenant).values(due_at=func.now())
                )
                assert due.rowcount == 6
            # The due timers are claimed right at start-up, so the process may die before it is ready.
            with contextlib.suppress(ServiceFailedToStart):
                processes.start([SERVICE], env={faults.CRASH_AT_ENV: point})
            assert processes.wait_exit(SERVICE) == -signal.SIGKILL, "the crash point was not reached"
            processes.start([SERVICE])

            async def moved_on() -> list[dict[str, Any]] | None:
                states = [(await api.get(f"/v1/enrollments/{e}")).json() for e in kinds]
                done = all(
                    s["current_step_id"] == EXPECTED[kinds[s["id"]]][-1] and s["waiting_action_id"]
                    for s in states
                )
                return states if done else None

            states = await eventually(
                moved_on, what="every enrollment past its timer after the restart", within=60
            )
            async with engine.connect() as conn:
                for state in states:
                    enrollment_id = uuid.UUID(state["id"])
                    a = tables.manual_actions.c
                    steps_queued = (
                        (
                            await conn.execute(
                                select(a.step_id)
                                .where(a.enrollment_id == enrollment_id)
                                .order_by(a.created_at)
                            )
                        )
                        .scalars()
                        .all()
                    )
                    assert list(steps_queued) == EXPECTED[kinds[state["id"]]], state
                    unfired = await conn.scalar(
                        select(func.count()).where(t.enrollment_id == enrollment_id, t.fired_at.is_(None))
                    )
                    assert unfired == 0
                    history = [h["event"] for h in state["history"]]
                    assert history.count("wait_ended") + history.count("timed_out") == 1, history
        finally:
            await engine.dispose()

        # On the topics: each action queued once (the relay may resend a row it had not marked as
        # sent yet, always with the same envelope id), and one CancelAction per timed-out call.
        docs = await eventually(
            lambda: _complete(tail, kinds), what="every ActionQueued and CancelAction on the topics"
        )
        for enrollment_id, kind in kinds.items():
            mine = [d for d in docs if d.get("data", {}).get("enrollment_id") == enrollment_id]
            queued = [d for d in mine if d["type"] == "ActionQueued"]
            assert len({d["data"]["action_id"] for d in queued}) == len(EXPECTED[kind])
            assert len({d["id"] for d in queued}) == len(EXPECTED[kind])
            cancels = {d["id"] for d in mine if d["type"] == "CancelAction"}
            assert len(cancels) == (1 if kind == "timeout" else 0)
    finally:
        await tail.stop()


async def _complete(tail: TopicTail, kinds: dict[str, str]) -> list[dict[str, Any]] | None:
    docs = await tail.read()
    wanted = sum(len(EXPECTED[k]) for k in kinds.values()) + sum(1 for k in kinds.values() if k == "timeout")
    found = {
        d["id"]
        for d in docs
        if d.get("type") in ("ActionQueued", "CancelAction")
        and d.get("data", {}).get("enrollment_id") in kinds
    }
    return docs if len(found) >= wanted else None
