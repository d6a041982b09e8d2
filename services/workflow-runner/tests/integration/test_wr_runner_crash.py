"""The real workflow-runner process is SIGKILLed inside its timer loop or its consumer; after a
restart every enrollment moved on exactly once: no action duplicated, none lost.

Crash points (``handlers.timers``): ``timer.after-claim`` (due timers locked, nothing changed: the
restarted process must fire them) and ``timer.after-commit`` (the enrollments moved and their
timers are marked fired: the restarted process must not fire them again; timers of the same
tenant not in that batch are fired after the restart). In the consumer: ``consumer.after-fetch``
(the ActionCompleted was fetched, nothing written) and ``consumer.after-handler`` (the next action
committed, the offset not: the event comes again and the inbox must make it a no-op). The process
runs on its own database and consumer group, so it shares nothing with the in-process harness or
the end-to-end services.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import func, select, update

from devstack.processes import ServiceFailedToStart, ServiceProcesses
from devstack.testing import eventually
from manual_actions import faults
from manual_actions.auth import IdentityStore, Role
from manual_actions.contracts import ActionCompleted, ActionType, Envelope, topics
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


GROUP = f"wr-timer-crash-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def processes(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcesses]:
    run_dir = Path(tmp_path_factory.mktemp("wr-timer-crash"))
    started = ServiceProcesses(
        stack,
        run_dir,
        ports={SERVICE: _free_port()},
        database_prefix=PREFIX,
        extra_env={"CONSUMER_GROUP_ID": GROUP, "TIMER_INTERVAL_MS": "100"},
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


async def _caught_up(bootstrap: str, group: str) -> None:
    """Wait until ``group`` committed every message written so far on the topics it has seen, so
    a crash point is reached by the test's own event, not by a backlog."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await admin.start()
    await probe.start()
    try:

        async def done() -> bool:
            committed = await admin.list_consumer_group_offsets(group)
            ends = await probe.end_offsets(list(committed))
            return bool(committed) and all(meta.offset >= ends[tp] for tp, meta in committed.items())

        await eventually(done, what=f"consumer group {group} caught up", within=60)
    finally:
        await probe.stop()
        await admin.close()


@pytest.mark.parametrize("point", [faults.CONSUMER_AFTER_FETCH, faults.CONSUMER_AFTER_HANDLER])
async def test_sigkill_in_the_consumer_moves_the_enrollment_exactly_once(
    point: str, stack: Any, processes: ServiceProcesses
) -> None:
    token, tenant = await _admin_token(processes)
    api = httpx.AsyncClient(
        base_url=processes.url(SERVICE), headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    steps = [
        {"id": "sms1", "type": "manual_sms", "action_name": "Intro", "message": "Hi"},
        {"id": "route", "type": "branch", "on": {"sms_sent": "call1", "default": "end"}},
        {"id": "call1", "type": "manual_call", "action_name": "Follow-up call"},
    ]
    workflow = (await api.post("/v1/workflows", json={"name": "Consumer crash", "steps": steps})).json()
    assert (await api.post(f"/v1/workflows/{workflow['id']}/publish")).status_code == 200
    contact = (await api.post("/v1/contacts", json={"name": "Crash", "phone": "+14155557100"})).json()
    enrollment = (
        await api.post(f"/v1/workflows/{workflow['id']}/enrollments", json={"contact_id": contact["id"]})
    ).json()
    action_id = uuid.UUID(enrollment["waiting_action_id"])

    await _caught_up(stack.kafka_bootstrap, GROUP)
    processes.kill(SERVICE, signal.SIGTERM)
    processes.start([SERVICE], env={faults.CRASH_AT_ENV: point})
    completed = Envelope.wrap(
        ActionCompleted(
            action_id=action_id,
            action_type=ActionType.SMS,
            enrollment_id=uuid.UUID(enrollment["id"]),
            step_id="sms1",
            assignee_user_id=None,
            outcome="sent",
            completed_by=None,
            completed_at=datetime.now(UTC),
        ),
        source="action-queue",
        tenant=tenant,
        subject=str(action_id),
        sequence=2,
    )
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(
            topics.ACTION_LIFECYCLE,
            completed.to_json_bytes(),
            key=completed.subject.encode(),
            headers=completed.kafka_headers(),
        )
    finally:
        await producer.stop()
    assert processes.wait_exit(SERVICE) == -signal.SIGKILL, "the crash point was not reached"
    processes.start([SERVICE])

    async def at_the_call() -> dict[str, Any] | None:
        state = (await api.get(f"/v1/enrollments/{enrollment['id']}")).json()
        return state if state["current_step_id"] == "call1" else None

    state = await eventually(at_the_call, what="the enrollment at the call after the restart", within=60)
    await _caught_up(stack.kafka_bootstrap, GROUP)  # the redelivered event (after-handler) is handled
    state = (await api.get(f"/v1/enrollments/{enrollment['id']}")).json()
    assert [h["event"] for h in state["history"]].count("action_completed") == 1
    engine = create_engine(processes.env_for(SERVICE)["DATABASE_URL"])
    try:
        async with engine.connect() as conn:
            a = tables.manual_actions.c
            queued = (
                (await conn.execute(select(a.step_id).where(a.enrollment_id == uuid.UUID(enrollment["id"]))))
                .scalars()
                .all()
            )
    finally:
        await engine.dispose()
    assert sorted(queued) == ["call1", "sms1"]
