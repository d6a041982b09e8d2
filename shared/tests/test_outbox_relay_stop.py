"""The outbox relay stops when its task is cancelled, even when a NOTIFY arrives in the same
moment (on Python 3.11 ``asyncio.wait_for`` lost such a cancellation and the relay went on), and
the record batches it builds itself put every key where ``send()`` would, in order."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncEngine

from manual_actions.contracts import ActionDeleted, ActionType, Envelope, decode
from manual_actions.db import create_engine, session_factory
from manual_actions.kafka import TopicSpec, create_producer, ensure_topics
from manual_actions.outbox import OutboxRelay, add_to_outbox, inbox_table, outbox_table
from manual_actions.settings import ServiceSettings
from manual_actions.waiting import wait_event


async def test_wait_event_is_cancelled_even_when_the_event_is_set_in_the_same_moment() -> None:
    event = asyncio.Event()
    waiter = asyncio.create_task(wait_event(event, 60))
    await asyncio.sleep(0)  # the waiter is now waiting
    event.set()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter


async def test_wait_event_returns_on_the_event_or_after_the_time() -> None:
    event = asyncio.Event()
    async with asyncio.timeout(5):
        await wait_event(event, 0.01)  # times out quietly
        asyncio.get_running_loop().call_later(0.01, event.set)
        await wait_event(event, 60)  # returns as soon as it is set


@pytest.fixture
async def engine(stack: Any) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(stack.database_url(f"test_relay_stop_{uuid.uuid4().hex[:10]}"), pool_size=2)
    metadata = MetaData()
    outbox_table(metadata)
    inbox_table(metadata)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def producer(stack: Any) -> AsyncIterator[AIOKafkaProducer]:
    producer = create_producer(
        ServiceSettings(service_name="relay-stop-tests", kafka_bootstrap_servers=stack.kafka_bootstrap)
    )
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


@pytest.mark.integration
async def test_relay_task_cancelled_as_a_notify_arrives_stops(
    engine: AsyncEngine, producer: AIOKafkaProducer
) -> None:
    relay = OutboxRelay(engine, producer, poll_interval_ms=60_000)
    task = asyncio.create_task(relay.run())
    try:
        async with asyncio.timeout(30):
            while not relay.is_active:  # noqa: ASYNC110 - waiting for the advisory lock
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # past its first look at the outbox, waiting for NOTIFY
        relay._on_notify()  # what asyncpg calls for a NOTIFY on the channel
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=10)
        assert task in done, "the relay ignored its cancellation"
        assert task.cancelled()
        assert not relay.is_active
    finally:
        if not task.done():
            await relay.stop()
            await task


@pytest.mark.integration
async def test_relay_batches_keep_each_key_on_its_partition_in_order(
    stack: Any, engine: AsyncEngine, producer: AIOKafkaProducer
) -> None:
    """The relay builds its own record batches: every record must land on the partition ``send()``
    would have chosen for its key, and one key's records must keep their outbox order."""
    topic = f"test.relay-batches-{uuid.uuid4().hex[:10]}"
    await ensure_topics(stack.kafka_bootstrap, topics=[TopicSpec(topic, partitions=3)])
    subjects = [str(uuid.uuid4()) for _ in range(25)]
    staged: list[Envelope[Any]] = []
    padding = "x" * 1500  # ~2 KB records: the 2,000 of them need several 512 KiB batches
    for n in range(2000):
        payload = ActionDeleted(
            action_id=uuid.uuid4(),
            action_type=ActionType.SMS,
            enrollment_id=uuid.uuid4(),
            step_id=f"s{n}",
            assignee_user_id=None,
            deleted_by=None,
            reason=padding,
            deleted_at=datetime.now(UTC),
        )
        staged.append(
            Envelope.wrap(payload, source="test", tenant="t", subject=subjects[n % 25], sequence=n // 25 + 1)
        )
    async with session_factory(engine)() as session, session.begin():
        for e in staged:
            await add_to_outbox(session, topic, e)

    assert await OutboxRelay(engine, producer, batch_size=1000).publish_pending() == 2000

    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(3)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        records: list[Any] = []
        async with asyncio.timeout(30):
            while len(records) < 2000:
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(batch)
    finally:
        await consumer.stop()
    assert len(records) == 2000
    expected_partition = DefaultPartitioner()
    for record in records:
        assert record.partition == expected_partition(record.key, [0, 1, 2], [0, 1, 2])
    order = {e.id: i for i, e in enumerate(staged)}
    for subject in subjects:
        mine = [order[decode(r.value).id] for r in records if r.key == subject.encode()]
        assert mine == sorted(mine) and len(mine) == 80
