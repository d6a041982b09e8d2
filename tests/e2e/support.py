"""Helpers for the end-to-end tests: API clients and polling."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from manual_actions.contracts import ActionQueued, ActionType, ContactSnapshot, Envelope, topics

T = TypeVar("T")


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to completion on a fresh event loop in its own thread.

    Tests here are synchronous, but Playwright's sync API keeps an event loop running in the test's
    thread, where ``asyncio.run`` would refuse to start.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def api(base_url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def eventually(probe: Callable[[], Any], *, timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``probe`` until it returns a truthy value; fail naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")


def action_queued(
    tenant: str, workflow_id: uuid.UUID, action_type: ActionType = ActionType.SMS
) -> Envelope[ActionQueued]:
    """A valid ActionQueued as workflow-runner would publish it, for a workflow of ``workflow_id``."""
    action_id = uuid.uuid4()
    payload = ActionQueued(
        action_id=action_id,
        action_type=action_type,
        action_name="Crash test SMS",
        workflow_id=workflow_id,
        workflow_version=1,
        workflow_name="Crash test",
        step_id="sms1",
        enrollment_id=uuid.uuid4(),
        contact=ContactSnapshot(contact_id=uuid.uuid4(), name="Crash Test", phone="+14155550111"),
        assignee_user_id=uuid.uuid4(),
        message="hello",
        queued_at=datetime.now(UTC),
    )
    return Envelope.wrap(payload, source="workflow-runner", tenant=tenant, subject=str(action_id), sequence=1)


async def produce(bootstrap: str, envelope: Envelope[Any]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(
            topics.ACTION_LIFECYCLE,
            envelope.to_json_bytes(),
            key=envelope.subject.encode(),
            headers=envelope.kafka_headers(),
        )
    finally:
        await producer.stop()


async def wait_caught_up(bootstrap: str, group: str, *, within_s: float = 60.0) -> None:
    """Wait until consumer group ``group`` has committed every message written so far.

    A crash-point test must crash on its own event, not on a backlog other tests left behind.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await admin.start()
    await probe.start()
    try:
        deadline = time.monotonic() + within_s
        behind: dict[Any, tuple[int, int]] = {}
        while time.monotonic() < deadline:
            committed = await admin.list_consumer_group_offsets(group)
            ends = await probe.end_offsets(list(committed))
            behind = {tp: (meta.offset, ends[tp]) for tp, meta in committed.items() if meta.offset < ends[tp]}
            if committed and not behind:
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"consumer group {group} still behind: {behind}")
    finally:
        await probe.stop()
        await admin.close()
