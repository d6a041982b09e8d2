"""Fixtures for the workflow-runner integration tests: the real service wiring (``build_service``)
against the session's Kafka and PostgreSQL (``stack``), its HTTP app driven in-process, its outbox
relay and consumer running as tasks, and a recorder of the action-lifecycle topic."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from wr_harness import DATABASE, GROUP, Harness, Recorder

from manual_actions.auth import IdentityStore
from manual_actions.contracts import topics
from manual_actions.db import create_engine
from workflow_runner.entrypoints.main import Settings, build_service


@pytest.fixture(scope="module")
async def wr(stack: Any) -> AsyncIterator[Harness]:
    settings = Settings(
        kafka_bootstrap_servers=stack.kafka_bootstrap,
        database_url=stack.database_url(DATABASE),
        identity_database_url=stack.database_url("identity"),
        consumer_group_id=GROUP,
        consumer_batch_timeout_ms=50,
        outbox_poll_interval_ms=50,
    )
    service = await build_service(settings)
    loops = [asyncio.create_task(loop()) for loop in service.background]
    identity_engine = create_engine(settings.identity_database_url, pool_size=2)
    identity = IdentityStore(identity_engine)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    recorder = Recorder()
    reader = AIOKafkaConsumer(
        topics.ACTION_LIFECYCLE,
        bootstrap_servers=stack.kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await reader.start()

    async def record() -> None:
        while True:
            batch = await reader.getmany(timeout_ms=100)
            for records in batch.values():
                recorder.records.extend(records)

    recording = asyncio.create_task(record())
    try:
        yield Harness(
            service=service,
            settings=settings,
            identity=identity,
            producer=producer,
            recorder=recorder,
            bootstrap=stack.kafka_bootstrap,
        )
    finally:
        recording.cancel()
        # The service's own graceful shutdown (what `serve` does on SIGTERM): the consumer and the
        # relay finish their batch in flight and their loops return. Bounded, so a component that
        # does not stop fails the run naming it instead of hanging it.
        stuck: list[str] = []
        for callback in service.on_shutdown:
            try:
                await asyncio.wait_for(callback(), timeout=60)
            except TimeoutError:
                stuck.append(f"shutdown {callback!r}")
        _, pending = await asyncio.wait([recording, *loops], timeout=60)
        stuck += [f"loop {t.get_coro()!r}" for t in pending]
        for task in pending:
            task.cancel()
        await reader.stop()
        await producer.stop()
        await identity_engine.dispose()
        if stuck:
            raise AssertionError(f"workflow-runner did not stop within 60 s: {stuck}")
        for task in loops:
            if not task.cancelled() and task.exception() is not None:
                raise AssertionError("a background loop of workflow-runner crashed") from task.exception()
