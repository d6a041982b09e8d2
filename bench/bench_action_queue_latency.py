"""Benchmark: from the workflow runner's commit to the action being visible in action-queue, at a
steady 1,000 actions per second.

    ./dev bench -k latency

A producer process plays the workflow runner: every 50 ms it commits one transaction that stages
50 ActionQueued envelopes in an outbox (the rows ``add_to_outbox`` writes, in one INSERT, and one
NOTIFY), in a database of its own, and the real ``OutboxRelay`` (with ``create_producer``:
idempotent, acks=all, linger 5 ms) publishes them to ``manual-actions.action-lifecycle``. It
records the wall-clock time right after each commit returned.

This process runs a real action-queue (``build_service``: its database, relay, maintenance loops
and HTTP app) whose consumer is the service's ``BatchConsumer`` and batch handler with the
service's settings, wrapped only to note the wall-clock time at which each batch's transaction
had committed, the moment from which ``GET /v1/actions/{id}`` returns the action (a sample is
checked through the API). Latency = visible - committed, per action; printed as p50/p95/p99/max
with the share spent before the broker acknowledged (the relay: ``published_at - created_at`` of
the outbox rows, both server-side).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import statistics
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from sqlalchemy import MetaData, func, insert, select, text

from action_queue.entrypoints.consumer import TOPICS, batch_handler
from action_queue.entrypoints.main import Settings, build_service
from manual_actions.auth import IdentityStore, Role
from manual_actions.contracts import ActionQueued, ActionType, ContactSnapshot, Envelope, topics
from manual_actions.db import create_engine, ensure_database
from manual_actions.kafka import BatchConsumer, Delivered, create_producer, registry_topics
from manual_actions.outbox import OUTBOX_CHANNEL, OutboxRelay, inbox_table, outbox_table
from manual_actions.settings import ServiceSettings

RATE = 1000  # actions per second
TICK_S = 0.05  # one transaction per tick (50 actions)
SECONDS = int(os.environ.get("BENCH_LATENCY_SECONDS", "30"))
WARM_UP_S = 3  # the first seconds are not counted (connections, JIT of the broker, group join)


def _runner(bootstrap: str, database_url: str, tenant: str, assignee: str, out: Any) -> None:
    """The producer process (spawned): commits at RATE for SECONDS and reports (action id, commit time)."""
    out.put(asyncio.run(_run_runner(bootstrap, database_url, tenant, uuid.UUID(assignee))))


async def _run_runner(bootstrap: str, database_url: str, tenant: str,
                      assignee: uuid.UUID) -> dict[str, Any]:
    await ensure_database(database_url)
    engine = create_engine(database_url, pool_size=2)
    metadata = MetaData()
    outbox = outbox_table(metadata)
    inbox_table(metadata)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    settings = ServiceSettings(service_name="bench-runner", kafka_bootstrap_servers=bootstrap,
                               database_url=database_url)
    producer = create_producer(settings)
    await producer.start()
    relay = OutboxRelay(engine, producer, batch_size=settings.outbox_batch_size,
                        poll_interval_ms=settings.outbox_poll_interval_ms)
    relay_task = asyncio.create_task(relay.run())
    committed: list[tuple[str, float]] = []
    per_tick = round(RATE * TICK_S)
    ticks = round(SECONDS / TICK_S)
    # Built before the clock starts: the runner's own work before its commit is not measured here.
    batches = [[_outbox_row(tenant, assignee) for _ in range(per_tick)] for _ in range(ticks)]
    late = 0
    started = time.monotonic()
    try:
        for tick, rows in enumerate(batches):
            due = started + tick * TICK_S
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                late += 1
            # One transaction per tick: its rows in one INSERT and one NOTIFY, as a bulk writer does.
            async with engine.begin() as conn:
                await conn.execute(insert(outbox), rows)
                await conn.execute(select(func.pg_notify(OUTBOX_CHANNEL, "")))
            at = time.time()
            committed.extend((row["key"], at) for row in rows)
        await asyncio.sleep(2)  # let the relay publish the tail
        async with engine.connect() as conn:
            relay_ms = [row[0] for row in await conn.execute(text(
                "SELECT EXTRACT(EPOCH FROM published_at - created_at) * 1000 FROM outbox "
                "WHERE published_at IS NOT NULL ORDER BY id"))]
    finally:
        await relay.stop()
        await asyncio.gather(relay_task, return_exceptions=True)
        await producer.stop()
        await engine.dispose()
    return {"committed": committed, "relay_ms": [float(v) for v in relay_ms], "late_ticks": late}


def _outbox_row(tenant: str, assignee: uuid.UUID) -> dict[str, Any]:
    """An outbox row with a new ActionQueued, as ``add_to_outbox`` writes it."""
    payload = ActionQueued(
        action_id=uuid.uuid4(), action_type=ActionType.SMS, action_name="Follow up", workflow_id=uuid.uuid4(),
        workflow_version=1, workflow_name="Bench", step_id="sms1", enrollment_id=uuid.uuid4(),
        contact=ContactSnapshot(contact_id=uuid.uuid4(), name="Bench", phone="+14155550100"),
        assignee_user_id=assignee, message="Hello", queued_at=datetime.now(UTC))
    envelope = Envelope.wrap(payload, source="workflow-runner", tenant=tenant,
                             subject=str(payload.action_id), sequence=1)
    return {"message_id": envelope.id, "tenant": tenant, "topic": topics.ACTION_LIFECYCLE,
            "key": envelope.subject, "value": envelope.to_jsonable(),
            "headers": [[name, value.decode()] for name, value in envelope.kafka_headers()]}


def _quantiles(values: Sequence[float]) -> str:
    q = statistics.quantiles(sorted(values), n=100, method="inclusive")
    return f"p50 {q[49]:.1f} ms, p95 {q[94]:.1f} ms, p99 {q[98]:.1f} ms, max {max(values):.1f} ms"


async def _caught_up(admin: AIOKafkaAdminClient, group: str, bootstrap: str) -> bool:
    """True when ``group`` committed up to the end of the lifecycle topic (old events worked off)."""
    try:
        committed = await admin.list_consumer_group_offsets(group)
    except KafkaError as exc:  # the group's coordinator is still being set up
        if not exc.retriable:
            raise
        return False
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await reader.start()
    try:
        count = next(t.partitions for t in registry_topics() if t.name == topics.ACTION_LIFECYCLE)
        partitions = [TopicPartition(topics.ACTION_LIFECYCLE, p) for p in range(count)]
        ends = await reader.end_offsets(partitions)
    finally:
        await reader.stop()
    return bool(ends) and all((committed[tp].offset if tp in committed else 0) >= end
                              for tp, end in ends.items())


async def test_commit_to_visible_latency_at_1000_per_second(stack: Any) -> None:
    group = f"aq-bench-lat-{uuid.uuid4().hex[:8]}"
    settings = Settings(kafka_bootstrap_servers=stack.kafka_bootstrap,
                        database_url=stack.database_url(f"aq_bench_lat_{uuid.uuid4().hex[:8]}"),
                        identity_database_url=stack.database_url("identity"), consumer_group_id=group)
    service = await build_service(settings)
    visible: dict[str, float] = {}
    handle = batch_handler(service.uow)

    async def timed(batch: Sequence[Delivered]) -> None:
        await handle(batch)
        at = time.time()  # the batch's transaction has committed: visible to the API from now
        for delivered in batch:
            if isinstance(delivered.envelope.data, ActionQueued):
                visible.setdefault(str(delivered.envelope.data.action_id), at)

    dead_letters = create_producer(settings)
    await dead_letters.start()
    consumer = BatchConsumer(settings, group_id=group, topics=TOPICS, handler=timed, producer=dead_letters)
    loops = [asyncio.create_task(loop()) for loop in service.background if "Consumer" not in repr(loop)]
    loops.append(asyncio.create_task(consumer.run()))
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    tenant = f"bench-lat-{uuid.uuid4().hex[:6]}"
    assignee = uuid.uuid4()
    try:
        # A fresh group starts at the beginning of the shared topic: work off what is there first.
        deadline = time.monotonic() + 300
        while not await _caught_up(admin, group, stack.kafka_bootstrap):
            assert time.monotonic() < deadline, "the consumer did not catch up with the topic"
            await asyncio.sleep(0.5)
        context = multiprocessing.get_context("spawn")
        out = context.Queue()
        runner = context.Process(target=_runner, args=(
            stack.kafka_bootstrap, stack.database_url(f"bench_runner_{uuid.uuid4().hex[:8]}"), tenant,
            str(assignee), out))
        runner.start()
        result = await asyncio.to_thread(out.get, True, SECONDS * 4 + 180)
        await asyncio.to_thread(runner.join, 30)
        committed: list[tuple[str, float]] = result["committed"]
        deadline = time.monotonic() + 30
        while any(action_id not in visible for action_id, _ in committed):
            assert time.monotonic() < deadline, "some actions never became visible"
            await asyncio.sleep(0.2)

        identity_engine = create_engine(settings.identity_database_url, pool_size=1)
        try:
            identity = IdentityStore(identity_engine)
            await identity.create_tenant(tenant, tenant)
            token = await identity.issue_token(tenant, Role.ADMIN, None, label="bench")
        finally:
            await identity_engine.dispose()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=service.app), base_url="http://aq",
                                     headers={"Authorization": f"Bearer {token}"}) as client:
            for action_id, _ in committed[::997]:
                assert (await client.get(f"/v1/actions/{action_id}")).status_code == 200

        start_at = committed[0][1] + WARM_UP_S
        latencies = [(visible[a] - at) * 1000 for a, at in committed if at >= start_at]
        relay_ms = result["relay_ms"][len(committed) - len(latencies):]
        spread = committed[-1][1] - committed[0][1]
        print(f"\n{len(committed)} actions committed in {spread:.1f}s ({len(committed) / spread:,.0f}/s, "
              f"target {RATE}/s) ({result['late_ticks']} late ticks); counted after {WARM_UP_S}s warm-up: "
              f"{len(latencies)}")
        print(f"commit -> visible in action-queue: {_quantiles(latencies)}")
        print(f"of which commit -> relay marked published (broker acknowledged): {_quantiles(relay_ms)}")
        print(f"relay poll interval {settings.outbox_poll_interval_ms} ms (woken by NOTIFY), producer "
              f"linger 5 ms, consumer getmany timeout {settings.consumer_batch_timeout_ms} ms, "
              f"batch max {settings.consumer_batch_max_records}; load average {os.getloadavg()[0]:.2f}")
    finally:
        await consumer.stop()
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await admin.close()
        await dead_letters.stop()
        for callback in service.on_shutdown:
            await callback()
