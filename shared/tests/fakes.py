"""In-memory stand-ins for aiokafka's consumer and producer, for unit tests of the consumer loop.

They implement only what ``manual_actions.kafka.BatchConsumer`` uses, and they are strict where
the real client is lenient in a dangerous way: ``commit()`` without explicit offsets fails the
test, as does committing a partition that is not assigned. Integration tests use the real broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError, KafkaConnectionError


@dataclass
class FakeRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp: int = 0


@dataclass
class FakeBroker:
    """Topics as lists of records per partition, committed offsets per group, and an event log."""

    partitions: int = 1
    logs: dict[TopicPartition, list[FakeRecord]] = field(default_factory=dict)
    committed: dict[tuple[str, TopicPartition], int] = field(default_factory=dict)
    events: list[tuple[Any, ...]] = field(default_factory=list)

    def produce(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        partition: int = 0,
        headers: Iterable[tuple[str, bytes]] = (),
    ) -> FakeRecord:
        tp = TopicPartition(topic, partition)
        log = self.logs.setdefault(tp, [])
        record = FakeRecord(topic, partition, len(log), key, value, tuple(headers))
        log.append(record)
        return record

    def records(self, topic: str) -> list[FakeRecord]:
        return [r for tp, rs in sorted(self.logs.items()) if tp.topic == topic for r in rs]


class FakeConsumer:
    """Enough of AIOKafkaConsumer for BatchConsumer: one member that owns every partition."""

    def __init__(self, broker: FakeBroker, **config: Any) -> None:
        self.broker = broker
        self.config = config
        self.group_id: str = config["group_id"]
        self.listener: Any = None
        self.topics: list[str] = []
        self.positions: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        self.started = False
        self.stopped = False

    def subscribe(self, topics: Iterable[str], listener: Any = None) -> None:
        self.topics = list(topics)
        self.listener = listener

    async def start(self) -> None:
        self.started = True
        tps = {TopicPartition(t, p) for t in self.topics for p in range(self.broker.partitions)}
        for tp in tps:
            self.positions[tp] = self.broker.committed.get((self.group_id, tp), 0)
        if self.listener is not None:
            await self.listener.on_partitions_assigned(tps)

    async def stop(self) -> None:
        self.stopped = True

    def assignment(self) -> set[TopicPartition]:
        return set(self.positions)

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[FakeRecord]]:
        wanted = set(partitions) or set(self.positions)
        budget = max_records if max_records is not None else 10**9
        result: dict[TopicPartition, list[FakeRecord]] = {}
        for tp in sorted(wanted):
            if tp in self._paused or tp not in self.positions or budget <= 0:
                continue
            log = self.broker.logs.get(tp, [])
            chunk = log[self.positions[tp] : self.positions[tp] + budget]
            if chunk:
                result[tp] = chunk
                self.positions[tp] += len(chunk)
                budget -= len(chunk)
        if not result:
            await asyncio.sleep(min(timeout_ms, 20) / 1000)
        return result

    async def commit(self, offsets: dict[TopicPartition, int] | None = None) -> None:
        assert offsets is not None, "commit() without explicit offsets commits everything fetched"
        for tp, offset in offsets.items():
            if tp not in self.positions:
                raise IllegalStateError(f"Partition {tp} is not assigned")
            self.broker.committed[(self.group_id, tp)] = offset
            self.broker.events.append(("commit", tp.topic, tp.partition, offset))

    def highwater(self, tp: TopicPartition) -> int:
        return len(self.broker.logs.get(tp, []))

    def pause(self, *tps: TopicPartition) -> None:
        self._paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self._paused.difference_update(tps)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    async def revoke(self, tps: set[TopicPartition]) -> None:
        """Test helper: what a rebalance does, revoke callback first, then the partitions go."""
        if self.listener is not None:
            await self.listener.on_partitions_revoked(tps)
        for tp in tps:
            self.positions.pop(tp, None)
            self._paused.discard(tp)
        if self.listener is not None:
            await self.listener.on_partitions_assigned(set(self.positions))


class FakeProducer:
    """Records sends; each ack arrives ``ack_delay`` seconds later (or fails while ``failing_acks`` > 0)."""

    def __init__(self, broker: FakeBroker, *, ack_delay: float = 0.01) -> None:
        self.broker = broker
        self.ack_delay = ack_delay
        self.failing_acks = 0

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[FakeRecord]:
        loop = asyncio.get_running_loop()
        ack: asyncio.Future[FakeRecord] = loop.create_future()
        fail = self.failing_acks > 0
        if fail:
            self.failing_acks -= 1

        def settle() -> None:
            if fail:
                self.broker.events.append(("ack-failed", topic))
                ack.set_exception(KafkaConnectionError("broker unreachable (fake)"))
                return
            record = self.broker.produce(topic, value, key=key, headers=headers or ())
            self.broker.events.append(("ack", topic, record.offset))
            ack.set_result(record)

        loop.call_later(self.ack_delay, settle)
        return ack
