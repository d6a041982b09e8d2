"""Benchmark: one bulk reassign over 100,000 actions, while an agent keeps working the queue.

    ./dev bench -k bulk_reassign

Runs against the real PostgreSQL and Kafka of the ``stack`` fixture (its own database). Prints how
long the bulk request took, its chunks per second, how long the outbox relay needed to publish the
100,000 ActionReassigned events, and, meanwhile, the latency of Let's Start for another agent and
how late the API's event loop woke up. Twice: with the bulk loop in the API's process (as the
service runs it with one process), and in a consumer child (``consumer_only``, as it runs with
more). Not part of the default test run (the file name does not start with ``test_``).
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from _bench_support import start_consumer_child
from sqlalchemy import func, insert, select

from action_queue.adapters import sql
from action_queue.adapters.tables import manual_actions, outbox
from action_queue.domain import ManualAction
from action_queue.entrypoints.main import Settings, build_service, consumer_only
from manual_actions.auth import IdentityStore, Role
from manual_actions.contracts import ActionQueued, ActionType, ContactSnapshot
from manual_actions.db import create_engine
from manual_actions.kafka import TopicSpec, ensure_topics
from manual_actions.service import run_service, tune_garbage_collector

COUNT = 100_000


def _queued(assignee: uuid.UUID, at: datetime) -> ActionQueued:
    return ActionQueued(action_id=uuid.uuid4(), action_type=ActionType.SMS, action_name="Follow up",
                        workflow_id=uuid.uuid4(), workflow_version=1, workflow_name="Bench", step_id="sms1",
                        enrollment_id=uuid.uuid4(),
                        contact=ContactSnapshot(contact_id=uuid.uuid4(), name="Bench Contact",
                                                phone="+14155550100"),
                        assignee_user_id=assignee, message="Hello", queued_at=at)


async def _watch_loop(stalls: list[float]) -> None:
    """Append how late each 5 ms sleep wakes up: how long the event loop, shared by the bulk loop
    and the API, was kept from other work."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time()
        await asyncio.sleep(0.005)
        stalls.append(loop.time() - asked - 0.005)


async def _start_child(settings: Settings, bootstrap: str) -> asyncio.subprocess.Process:
    """A consumer child of the service (``consumer_only``) on this bench's database; its consumer
    reads an empty topic of its own, so only its worker loops work."""
    topic = f"bench-aq-bulk-idle-{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, topics=[TopicSpec(topic, partitions=1)])
    return await start_consumer_child(__file__, topic, settings,
                                      group_id=f"{settings.consumer_group_id}-child", ready_within=60)


@pytest.mark.parametrize("bulk_in", ["api_process", "child_process"])
async def test_bulk_reassign_of_100k_actions(stack: Any, bulk_in: str) -> None:
    settings = Settings(kafka_bootstrap_servers=stack.kafka_bootstrap,
                        database_url=stack.database_url(f"aq_bench_{uuid.uuid4().hex[:8]}"),
                        identity_database_url=stack.database_url("identity"),
                        consumer_group_id=f"aq-bench-{uuid.uuid4().hex[:8]}", outbox_poll_interval_ms=50)
    service = await build_service(settings)
    tune_garbage_collector()  # as run_service does in the service's process
    # relay (and the bulk loop, in the API's process): the consumer is not part of what is measured
    here = service.worker_loops if bulk_in == "api_process" else []
    loops = [asyncio.create_task(loop()) for loop in [*service.background, *here]
             if "Consumer" not in repr(loop)]
    child: asyncio.subprocess.Process | None = None
    identity_engine = create_engine(settings.identity_database_url, pool_size=2)
    identity = IdentityStore(identity_engine)
    tenant = f"bench-{uuid.uuid4().hex[:8]}"
    await identity.create_tenant(tenant, "Bench")
    agent, other, worker = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    admin_token = await identity.issue_token(tenant, Role.ADMIN, None, label="bench")
    worker_token = await identity.issue_token(tenant, Role.AGENT, worker, label="bench")
    engine = service.uow.engine
    try:
        base = datetime.now(UTC) - timedelta(days=1)
        started = time.perf_counter()
        rows = [sql._row(ManualAction.from_queued(tenant, _queued(agent, base + timedelta(milliseconds=i)),
                                                  1)) for i in range(COUNT)]
        rows += [sql._row(ManualAction.from_queued(tenant, _queued(worker, base), 1)) for _ in range(2000)]
        async with engine.begin() as conn:
            for i in range(0, len(rows), 5000):
                await conn.execute(insert(manual_actions), rows[i:i + 5000])
        print(f"\nstored {len(rows)} actions in {time.perf_counter() - started:.1f}s")
        async with engine.connect() as conn:
            outbox_before = (await conn.execute(select(func.count()).select_from(outbox))).scalar_one()
        if bulk_in == "child_process":
            child = await _start_child(settings, stack.kafka_bootstrap)

        transport = httpx.ASGITransport(app=service.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://aq",
                                     headers={"Authorization": f"Bearer {admin_token}"}) as admin, \
                httpx.AsyncClient(transport=transport, base_url="http://aq",
                                  headers={"Authorization": f"Bearer {worker_token}"}) as worker_client:
            request_id = f"bench-{uuid.uuid4()}"
            stalls: list[float] = []
            watching = asyncio.create_task(_watch_loop(stalls))
            started = time.perf_counter()
            response = await admin.post("/v1/actions/bulk", json={
                "request_id": request_id, "operation": "reassign", "filter": {"assignee_user_id": str(agent)},
                "assignee_user_id": str(other)})
            assert response.status_code == 202, response.text
            accepted = time.perf_counter() - started
            latencies: list[float] = []
            while True:
                t0 = time.perf_counter()
                next_response = await worker_client.post("/v1/queue/next")
                latencies.append(time.perf_counter() - t0)
                assert next_response.status_code in (200, 204), next_response.text
                body = (await admin.get(f"/v1/actions/bulk/{request_id}")).json()
                if body["status"] == "done":
                    break
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - started
            watching.cancel()
            assert body["changed"] == COUNT, body
            while True:
                async with engine.connect() as conn:
                    pending = (await conn.execute(select(func.count()).select_from(outbox)
                                                  .where(outbox.c.published_at.is_(None)))).scalar_one()
                    total = (await conn.execute(select(func.count()).select_from(outbox))).scalar_one()
                if pending == 0 and total >= outbox_before + COUNT:
                    break
                await asyncio.sleep(0.5)
            published = time.perf_counter() - started
        print(f"bulk loop in the {bulk_in.replace('_', ' ')}")
        print(f"bulk reassign of {COUNT} actions: accepted in {accepted * 1000:.0f} ms, "
              f"done in {elapsed:.1f}s "
              f"({COUNT / elapsed:.0f} actions/s, chunk {settings.bulk_chunk_size}); all events published "
              f"after {published:.1f}s")
        latencies.sort()
        p99_call = latencies[int(len(latencies) * 0.99)]
        print(f"Let's Start for another agent meanwhile: {len(latencies)} calls, median "
              f"{statistics.median(latencies) * 1000:.1f} ms, p99 {p99_call * 1000:.1f} ms, "
              f"max {latencies[-1] * 1000:.1f} ms")
        stalls.sort()
        p50, p99 = stalls[len(stalls) // 2], stalls[int(len(stalls) * 0.99)]
        print(f"event loop stalls meanwhile (a 5 ms sleep's lateness): p50 {p50 * 1000:.1f} ms, "
              f"p99 {p99 * 1000:.1f} ms, max {stalls[-1] * 1000:.1f} ms")
    finally:
        if child is not None:
            child.send_signal(signal.SIGTERM)
            await child.wait()
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        for callback in service.on_shutdown:
            await callback()
        await identity_engine.dispose()


async def _child(topic: str) -> None:
    print("ready", flush=True)
    await consumer_only(Settings(), topics=[topic])


if __name__ == "__main__":
    run_service(_child(sys.argv[1]))  # as the service runs its children: uvloop, GC tuned
