"""Fixtures for the action-queue integration tests: the real service wiring (``build_service``)
against the session's Kafka and PostgreSQL (``stack``), its HTTP app driven in-process, its outbox
relay and consumer running as tasks, and a recorder of everything on our topics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aq_harness import DATABASE, GROUP, RECORDED_TOPICS, Harness, Recorder

from action_queue.entrypoints.main import Settings, build_service
from manual_actions.auth import IdentityStore
from manual_actions.db import create_engine


@pytest.fixture(scope="module")
async def aq(stack: Any) -> AsyncIterator[Harness]:
    settings = Settings(
        kafka_bootstrap_servers=stack.kafka_bootstrap,
        database_url=stack.database_url(DATABASE),
        identity_database_url=stack.database_url("identity"),
        consumer_group_id=GROUP,
        consumer_batch_timeout_ms=50,
        outbox_poll_interval_ms=50,
        maintenance_interval_ms=200,
        bulk_chunk_size=500,
    )
    service = await build_service(settings)
    loops = [asyncio.create_task(loop()) for loop in [*service.background, *service.worker_loops]]
    identity_engine = create_engine(settings.identity_database_url, pool_size=2)
    identity = IdentityStore(identity_engine)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    recorder = Recorder()
    reader = AIOKafkaConsumer(*RECORDED_TOPICS, bootstrap_servers=stack.kafka_bootstrap, group_id=None,
                              auto_offset_reset="earliest", enable_auto_commit=False)
    await reader.start()

    async def record() -> None:
        while True:
            batch = await reader.getmany(timeout_ms=100)
            for records in batch.values():
                recorder.records.extend(records)

    recording = asyncio.create_task(record())
    try:
        yield Harness(service=service, settings=settings, identity=identity, producer=producer,
                      recorder=recorder, reader=reader, bootstrap=stack.kafka_bootstrap)
    finally:
        recording.cancel()
        for task in loops:
            task.cancel()
        await asyncio.gather(recording, *loops, return_exceptions=True)
        for callback in service.on_shutdown:
            await callback()
        await reader.stop()
        await producer.stop()
        await identity_engine.dispose()
        for task in loops:
            if not task.cancelled() and task.exception() is not None:
                raise AssertionError("a background loop of action-queue crashed") from task.exception()
