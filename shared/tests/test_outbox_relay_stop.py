"""The outbox relay stops when its task is cancelled, even when a NOTIFY arrives in the same
moment (on Python 3.11 ``asyncio.wait_for`` lost such a cancellation and the relay went on)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncEngine

from manual_actions.db import create_engine
from manual_actions.kafka import create_producer
from manual_actions.outbox import OutboxRelay, _wait_event, inbox_table, outbox_table
from manual_actions.settings import ServiceSettings


async def test_wait_event_is_cancelled_even_when_the_event_is_set_in_the_same_moment() -> None:
    event = asyncio.Event()
    waiter = asyncio.create_task(_wait_event(event, 60))
    await asyncio.sleep(0)  # the waiter is now waiting
    event.set()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter


async def test_wait_event_returns_on_the_event_or_after_the_time() -> None:
    event = asyncio.Event()
    async with asyncio.timeout(5):
        await _wait_event(event, 0.01)  # times out quietly
        asyncio.get_running_loop().call_later(0.01, event.set)
        await _wait_event(event, 60)  # returns as soon as it is set


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
