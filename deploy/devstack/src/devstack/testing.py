"""Helpers for tests that run against the real stack (beside the ``stack`` fixture)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord


async def eventually(probe: Callable[[], Any], *, what: str, within: float = 30.0) -> Any:
    """Await until ``probe()`` (sync or async) is truthy; fail naming ``what`` and the last value.

    Polling, because what the tests wait on (a consumer's effect, a relay's publication) sends no
    notification a test could await.
    """
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")


@contextlib.asynccontextmanager
async def recording(bootstrap: str, *topics: str) -> AsyncIterator[list[ConsumerRecord[bytes, bytes]]]:
    """A list that receives every record of ``topics``, from their beginning, while the block runs.

    A group-less consumer in a background task: nothing is committed, so any number of tests can
    record the same topics. The list keeps growing until the block exits.
    """
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []

    async def record() -> None:
        while True:
            for batch in (await consumer.getmany(timeout_ms=100)).values():
                records.extend(batch)

    task = asyncio.create_task(record())
    try:
        yield records
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await consumer.stop()
