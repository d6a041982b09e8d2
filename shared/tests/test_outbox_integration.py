"""Outbox, relay and inbox against the real PostgreSQL and Kafka (the session's ``stack``).

Each test gets its own database (the relay's advisory lock is per database) and its own topic.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaTimeoutError
from aiokafka.partitioner import DefaultPartitioner
from prometheus_client import REGISTRY
from sqlalchemy import MetaData, text
from sqlalchemy.ext.asyncio import AsyncEngine

from manual_actions.contracts import ActionDeleted, ActionType, Envelope, decode
from manual_actions.contracts.messages import ActionSkipped
from manual_actions.db import create_engine, session_factory
from manual_actions.kafka import TopicSpec, create_producer, ensure_topics
from manual_actions.outbox import (
    OUTBOX_COPY_COLUMNS,
    OutboxRelay,
    add_batch_to_outbox,
    add_to_outbox,
    batch_record,
    first_time_seen,
    inbox_table,
    notify_outbox,
    outbox_table,
)
from manual_actions.settings import ServiceSettings

pytestmark = pytest.mark.integration


def envelope(n: int = 1) -> Envelope[Any]:
    payload = ActionDeleted(
        action_id=uuid.uuid4(),
        action_type=ActionType.SMS,
        enrollment_id=uuid.uuid4(),
        step_id=f"step-{n}",
        assignee_user_id=None,
        deleted_by=None,
        deleted_at=datetime.now(UTC),
    )
    return Envelope.wrap(
        payload, source="test", tenant="t-outbox", subject=str(payload.action_id), sequence=n + 1
    )


@pytest.fixture
async def engine(stack: Any) -> AsyncIterator[AsyncEngine]:
    url = stack.database_url(f"test_outbox_{uuid.uuid4().hex[:10]}")
    engine = create_engine(url, pool_size=4)
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
        ServiceSettings(service_name="outbox-tests", kafka_bootstrap_servers=stack.kafka_bootstrap)
    )
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


@pytest.fixture
async def topic(stack: Any) -> str:
    name = f"test.outbox-{uuid.uuid4().hex[:12]}"
    # One partition, so that the topic's order is the publication order of all rows.
    await ensure_topics(stack.kafka_bootstrap, topics=[TopicSpec(name, partitions=1)])
    return name


class SpyProducer:
    """The real producer, counting what this relay sent."""

    def __init__(self, real: AIOKafkaProducer) -> None:
        self.real = real
        self.sent = 0

    async def send(self, topic: str, **kwargs: Any) -> Any:
        self.sent += 1
        return await self.real.send(topic, **kwargs)


async def stage(
    engine: AsyncEngine, topic: str, envelopes: list[Envelope[Any]], *, commit: bool = True
) -> None:
    async with session_factory(engine)() as session, session.begin():
        for e in envelopes:
            await add_to_outbox(session, topic, e)
        if not commit:
            await session.rollback()


async def read_topic(stack: Any, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        records: list[ConsumerRecord[bytes, bytes]] = []
        async with asyncio.timeout(30):
            while await consumer.position(tp) < end:
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(batch)
        return records
    finally:
        await consumer.stop()


async def published_ids(stack: Any, topic: str) -> list[uuid.UUID]:
    return [decode(r.value).id for r in await read_topic(stack, topic)]


async def count(engine: AsyncEngine, where: str) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text(f"SELECT count(*) FROM outbox WHERE {where}")) or 0)


async def eventually(probe: Callable[[], Awaitable[bool]], *, within: float = 30, what: str) -> None:
    try:
        async with asyncio.timeout(within):
            while not await probe():  # noqa: ASYNC110 - polling database/broker state
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"not within {within}s: {what}")


async def test_relay_publishes_exactly_the_committed_rows_in_id_order(
    stack: Any, engine: AsyncEngine, producer: AIOKafkaProducer, topic: str
) -> None:
    first, rolled_back, second = (
        [envelope(i) for i in range(5)],
        [envelope(i) for i in range(3)],
        [envelope(9)],
    )
    await stage(engine, topic, first)
    await stage(engine, topic, rolled_back, commit=False)
    await stage(engine, topic, second)
    before = REGISTRY.get_sample_value("manual_actions_outbox_published_total", {"topic": topic}) or 0

    relay = OutboxRelay(engine, producer)
    assert await relay.publish_pending() == 6
    assert await relay.publish_pending() == 0  # marked: nothing is sent twice

    records = await read_topic(stack, topic)
    assert [decode(r.value).id for r in records] == [e.id for e in first + second]
    by_id = {e.id: e for e in first + second}
    for record in records:
        sent = by_id[decode(record.value).id]
        assert record.key == sent.subject.encode()
        assert decode(record.value) == sent
        assert list(record.headers) == sent.kafka_headers()
    assert await count(engine, "published_at IS NULL") == 0
    assert await count(engine, "published_at IS NOT NULL") == 6
    after = REGISTRY.get_sample_value("manual_actions_outbox_published_total", {"topic": topic})
    assert after == before + 6
    assert REGISTRY.get_sample_value("manual_actions_outbox_oldest_unpublished_age_seconds") == 0


async def test_running_relay_wakes_on_notify_and_publishes_only_after_commit(
    stack: Any, engine: AsyncEngine, producer: AIOKafkaProducer, topic: str
) -> None:
    # Polling is off in practice (a minute): only NOTIFY can make this relay publish quickly.
    relay = OutboxRelay(engine, producer, poll_interval_ms=60_000)
    task = asyncio.create_task(relay.run())
    try:
        await eventually(lambda: _true(relay.is_active), what="relay active")
        await asyncio.sleep(0.2)  # past its first look at the (empty) outbox
        assert REGISTRY.get_sample_value("manual_actions_outbox_relay_active") == 1

        rolled_back = envelope(1)
        await stage(engine, topic, [rolled_back], commit=False)
        committed = envelope(2)
        await stage(engine, topic, [committed])

        async def published() -> bool:
            return await count(engine, "published_at IS NOT NULL") == 1

        await eventually(published, within=10, what="published after NOTIFY")
        assert await published_ids(stack, topic) == [committed.id]
    finally:
        await relay.stop()
        await task
    assert not relay.is_active


async def _true(value: bool) -> bool:
    return value


async def test_only_one_relay_per_database_publishes_and_a_standby_takes_over(
    stack: Any, engine: AsyncEngine, producer: AIOKafkaProducer, topic: str
) -> None:
    spy_a, spy_b = SpyProducer(producer), SpyProducer(producer)
    options: dict[str, Any] = {"poll_interval_ms": 50, "lock_retry_interval_ms": 100}
    relay_a = OutboxRelay(engine, spy_a, **options)  # type: ignore[arg-type]
    relay_b = OutboxRelay(engine, spy_b, **options)  # type: ignore[arg-type]
    task_a = asyncio.create_task(relay_a.run())
    await eventually(lambda: _true(relay_a.is_active), what="relay A active")
    task_b = asyncio.create_task(relay_b.run())
    try:
        batches = [[envelope(10 * b + i) for i in range(5)] for b in range(4)]
        await asyncio.gather(*(stage(engine, topic, batch) for batch in batches))

        async def all_published() -> bool:
            return await count(engine, "published_at IS NULL") == 0

        await eventually(all_published, what="20 rows published")
        assert not relay_b.is_active
        assert (spy_a.sent, spy_b.sent) == (20, 0)
        # Publishing by hand is refused as well while another relay holds the lock.
        extra = envelope(99)
        await stage(engine, topic, [extra])
        assert await OutboxRelay(engine, SpyProducer(producer)).publish_pending() == 0  # type: ignore[arg-type]

        await relay_a.stop()
        await task_a
        await eventually(lambda: _true(relay_b.is_active), what="standby B takes over")
        later = [envelope(100 + i) for i in range(5)]
        await stage(engine, topic, later)
        await eventually(all_published, what="rows published by B")
        # B also published the row staged while A was active (A may or may not have got to it).
        assert spy_a.sent + spy_b.sent >= 26
        assert spy_b.sent >= 5
    finally:
        await relay_b.stop()
        await task_b
        if not task_a.done():
            await relay_a.stop()
            await task_a

    ids = await published_ids(stack, topic)
    # Never published concurrently: each row exactly once...
    staged = [e for batch in [*batches, [extra], later] for e in batch]
    assert sorted(ids) == sorted(e.id for e in staged)
    assert len(ids) == len(set(ids)) == 26
    # ...and each transaction's rows in the order it staged them (concurrent transactions may
    # commit in another order than their ids were drawn; one subject never spans them).
    for batch in [*batches, later]:
        positions = [ids.index(e.id) for e in batch]
        assert positions == sorted(positions)


async def test_unacknowledged_rows_stay_pending_and_a_crash_before_marking_means_a_resend(
    stack: Any, engine: AsyncEngine, producer: AIOKafkaProducer, topic: str
) -> None:
    staged = [envelope(i) for i in range(3)]
    await stage(engine, topic, staged)

    class Unacknowledged:
        async def send(self, topic: str, **kwargs: Any) -> asyncio.Future[Any]:
            ack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            ack.set_exception(KafkaTimeoutError())
            return ack

    with pytest.raises(KafkaTimeoutError):
        await OutboxRelay(engine, Unacknowledged()).publish_pending()  # type: ignore[arg-type]
    assert await count(engine, "published_at IS NULL") == 3

    # Broker acknowledges, then the relay's database connection dies before it marks the rows.
    class KillsTheRelayConnectionAfterAcks:
        async def send(self, topic: str, **kwargs: Any) -> Any:
            ack = await producer.send(topic, **kwargs)
            await ack
            async with engine.connect() as conn:
                await conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
            return ack

    with pytest.raises(Exception) as crash:
        await OutboxRelay(engine, KillsTheRelayConnectionAfterAcks(), batch_size=1).publish_pending()  # type: ignore[arg-type]
    assert "connection" in repr(crash.value).lower()
    assert await count(engine, "published_at IS NULL") == 3  # the first row was sent, never marked

    assert await OutboxRelay(engine, producer).publish_pending() == 3
    ids = await published_ids(stack, topic)
    # The first row went out twice (same envelope id: consumers dedupe); nothing was lost.
    assert ids == [staged[0].id, staged[0].id, staged[1].id, staged[2].id]


async def test_published_rows_are_pruned_after_the_retention(
    stack: Any, engine: AsyncEngine, producer: AIOKafkaProducer, topic: str
) -> None:
    await stage(engine, topic, [envelope(1), envelope(2)])
    relay = OutboxRelay(engine, producer, poll_interval_ms=50, retention=timedelta(0), prune_interval_s=0)
    task = asyncio.create_task(relay.run())
    try:

        async def gone() -> bool:
            return await count(engine, "true") == 0

        await eventually(gone, what="published rows pruned")
    finally:
        await relay.stop()
        await task
    assert len(await published_ids(stack, topic)) == 2


async def test_first_time_seen_dedupes_per_consumer_even_across_concurrent_transactions(
    engine: AsyncEngine,
) -> None:
    sessions = session_factory(engine)
    message_id = uuid.uuid4()
    async with sessions() as session, session.begin():
        assert await first_time_seen(session, "action-queue", message_id) is True
    async with sessions() as session, session.begin():
        assert await first_time_seen(session, "action-queue", message_id) is False
        assert await first_time_seen(session, "dashboard", message_id) is True  # another consumer

    # Two replicas handling the same redelivered message at once: exactly one effect.
    racing_id = uuid.uuid4()
    first_holds = asyncio.Event()
    release_first = asyncio.Event()

    async def first() -> bool:
        async with sessions() as session, session.begin():
            seen = await first_time_seen(session, "dialer", racing_id)
            first_holds.set()
            await release_first.wait()
            return seen

    async def second() -> bool:
        await first_holds.wait()
        async with sessions() as session, session.begin():
            return await first_time_seen(session, "dialer", racing_id)

    first_task, second_task = asyncio.create_task(first()), asyncio.create_task(second())
    await first_holds.wait()
    await asyncio.sleep(0.2)
    assert not second_task.done(), "the second must wait for the first transaction's outcome"
    release_first.set()
    assert (await first_task, await second_task) == (True, False)

    # A rolled-back record does not count.
    rolled_back_id = uuid.uuid4()
    async with sessions() as session, session.begin():
        assert await first_time_seen(session, "dialer", rolled_back_id) is True
        await session.rollback()
    async with sessions() as session, session.begin():
        assert await first_time_seen(session, "dialer", rolled_back_id) is True

    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT consumer, processed_at FROM inbox"))).all()
    assert {r.consumer for r in rows} == {"action-queue", "dashboard", "dialer"}
    assert all(r.processed_at is not None for r in rows)


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


async def test_batch_rows_publish_every_envelope_in_order_and_are_marked_once(
    stack: Any, engine: AsyncEngine, producer: AIOKafkaProducer, topic: str
) -> None:
    """Rows carrying many envelopes (``add_batch_to_outbox``, ``batch_record`` through COPY) among
    single rows: each envelope goes out as its own record with its key and headers, in staging
    order; the relay's batch size counts envelopes (a larger row goes alone), and each row is
    marked once."""
    single = [envelope(i) for i in range(2)]
    batched = [envelope(10 + i) for i in range(7)]
    other_type = [_other_type(20 + i) for i in range(2)]
    copied = [envelope(30 + i) for i in range(4)]
    async with session_factory(engine)() as session, session.begin():
        await add_to_outbox(session, topic, single[0])
        # Two runs of headers: two rows, order kept.
        await add_batch_to_outbox(session, topic, [*batched, *other_type])
        await add_to_outbox(session, topic, single[1])
    async with engine.begin() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        headers = [(name, text.decode()) for name, text in copied[0].kafka_headers()]
        await driver.copy_records_to_table(
            "outbox",
            columns=OUTBOX_COPY_COLUMNS,
            records=[
                batch_record(
                    topic, "t-outbox", headers, [(e.subject, json.dumps(e.to_jsonable())) for e in copied]
                )
            ],
        )
        await notify_outbox(conn)
    assert await count(engine, "true") == 5
    before = REGISTRY.get_sample_value("manual_actions_outbox_published_total", {"topic": topic}) or 0

    spy = SpyProducer(producer)
    # Batch size 3: the 7-envelope row goes alone, the 2-envelope row with the single after it.
    assert await OutboxRelay(engine, spy, batch_size=3).publish_pending() == 15  # type: ignore[arg-type]
    assert spy.sent == 15
    assert await count(engine, "published_at IS NULL") == 0
    after = REGISTRY.get_sample_value("manual_actions_outbox_published_total", {"topic": topic})
    assert after == before + 15

    staged = [single[0], *batched, *other_type, single[1], *copied]
    records = await read_topic(stack, topic)
    assert [decode(r.value) for r in records] == staged
    for record, sent in zip(records, staged, strict=True):
        assert record.key == sent.subject.encode()
        assert list(record.headers) == sent.kafka_headers()
    # The relay with its own record batches (the real producer) publishes them the same way.
    again = [envelope(40 + i) for i in range(3)]
    async with session_factory(engine)() as session, session.begin():
        await add_batch_to_outbox(session, topic, again)
    assert await OutboxRelay(engine, producer).publish_pending() == 3
    assert [decode(r.value) for r in await read_topic(stack, topic)][len(staged) :] == again


async def test_an_unacknowledged_batch_row_stays_pending_whole(
    engine: AsyncEngine, producer: AIOKafkaProducer, topic: str
) -> None:
    async with session_factory(engine)() as session, session.begin():
        await add_batch_to_outbox(session, topic, [envelope(i) for i in range(4)])

    class OneUnacknowledged:
        def __init__(self) -> None:
            self.sent = 0

        async def send(self, topic: str, **kwargs: Any) -> asyncio.Future[Any]:
            self.sent += 1
            ack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            if self.sent == 3:
                ack.set_exception(KafkaTimeoutError())
            else:
                ack.set_result(None)
            return ack

    with pytest.raises(KafkaTimeoutError):
        await OutboxRelay(engine, OneUnacknowledged()).publish_pending()  # type: ignore[arg-type]
    assert await count(engine, "published_at IS NULL") == 1
    assert await OutboxRelay(engine, producer).publish_pending() == 4


def _other_type(n: int) -> Envelope[Any]:
    """An envelope whose headers differ from ``envelope``'s (another type)."""
    payload = ActionSkipped(
        action_id=uuid.uuid4(),
        action_type=ActionType.SMS,
        assignee_user_id=None,
        reason="test",
        skipped_by=uuid.uuid4(),
        skipped_at=datetime.now(UTC),
    )
    return Envelope.wrap(
        payload, source="test", tenant="t-outbox", subject=str(payload.action_id), sequence=n
    )
