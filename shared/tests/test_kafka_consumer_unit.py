"""BatchConsumer's rules, driven through in-memory fakes of the aiokafka client (see fakes.py).

The same rules are checked against the real broker in test_kafka_integration.py; here the fakes
let us observe the order of acknowledgements and commits and count handler attempts exactly.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import sqlalchemy.exc as sa_exc
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError, UnknownTopicOrPartitionError

from manual_actions import kafka as kafka_module
from manual_actions.contracts import ActionDeleted, ActionType, Envelope
from manual_actions.contracts.dead_letters import parse_dead_letter_headers
from manual_actions.contracts.topics import DEAD_LETTERS
from manual_actions.kafka import BatchConsumer, Delivered, PermanentError, TransientError, is_transient
from manual_actions.settings import ServiceSettings


def _load_fakes() -> Any:
    # Loaded by path under a unique name: other test folders may have their own "fakes" module.
    name = "manual_actions_shared_tests_fakes"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("fakes.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


fakes = _load_fakes()
TOPIC = "test.unit-topic"
TP0 = TopicPartition(TOPIC, 0)


def envelope(n: int = 1, tenant: str = "t1") -> Envelope[Any]:
    payload = ActionDeleted(
        action_id=uuid.uuid4(),
        action_type=ActionType.SMS,
        enrollment_id=uuid.uuid4(),
        step_id=f"step-{n}",
        assignee_user_id=None,
        deleted_by=None,
        deleted_at=datetime.now(UTC),
    )
    return Envelope.wrap(payload, source="test", tenant=tenant, subject=str(payload.action_id), sequence=1)


class Harness:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, handler: Callable[..., Any], **options: Any) -> None:
        self.broker = fakes.FakeBroker()
        self.producer = fakes.FakeProducer(self.broker)
        self.fake_consumers: list[Any] = []

        def make_consumer(**config: Any) -> Any:
            consumer = fakes.FakeConsumer(self.broker, **config)
            self.fake_consumers.append(consumer)
            return consumer

        monkeypatch.setattr(kafka_module, "AIOKafkaConsumer", make_consumer)
        settings = ServiceSettings(
            service_name="unit", consumer_batch_max_records=100, consumer_batch_timeout_ms=10
        )
        options.setdefault("backoff_initial_s", 0.001)
        options.setdefault("backoff_max_s", 0.005)
        self.consumer = BatchConsumer(
            settings, group_id="g", topics=[TOPIC], handler=handler, producer=self.producer, **options
        )
        self.task: asyncio.Task[None] | None = None

    def produce(
        self, value: bytes | None, key: bytes | None = b"k", headers: Sequence[tuple[str, bytes]] = ()
    ) -> None:
        self.broker.produce(TOPIC, value, key=key, headers=headers)

    def start(self) -> None:
        self.task = asyncio.create_task(self.consumer.run())

    async def until(self, condition: Callable[[], bool], within: float = 5.0) -> None:
        async with asyncio.timeout(within):
            while not condition():
                assert self.task is None or not self.task.done() or self.task.exception() is None
                await asyncio.sleep(0.005)

    def committed(self) -> int | None:
        return self.broker.committed.get(("g", TP0))

    def commits(self) -> list[tuple[Any, ...]]:
        return [e for e in self.broker.events if e[0] == "commit"]

    async def stop(self) -> None:
        await self.consumer.stop()
        assert self.task is not None
        await self.task


def test_transient_errors_are_recognised_through_wrappers() -> None:
    assert is_transient(OSError("connection refused"))
    assert is_transient(TimeoutError())
    assert is_transient(KafkaConnectionError())
    assert is_transient(UnknownTopicOrPartitionError())  # retriable Kafka error
    assert is_transient(TransientError("twilio down"))
    assert is_transient(asyncpg.CannotConnectNowError("starting up"))
    assert is_transient(sa_exc.OperationalError("SELECT 1", {}, ConnectionRefusedError()))
    wrapped = sa_exc.DBAPIError("SELECT 1", {}, Exception("closed"), connection_invalidated=True)
    assert is_transient(wrapped)
    try:
        try:
            raise ConnectionResetError("peer reset")
        except ConnectionResetError as exc:
            raise RuntimeError("repository failed") from exc
    except RuntimeError as chained:
        assert is_transient(chained)

    assert not is_transient(ValueError("bad data"))
    assert not is_transient(PermanentError("no phone"))
    assert not is_transient(sa_exc.IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not is_transient(KeyError("missing"))


async def test_batch_is_handled_once_then_committed_past_its_last_offset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[list[Delivered]] = []

    async def handler(batch: Sequence[Delivered]) -> None:
        assert harness.committed() is None, "nothing may be committed before the handler returns"
        seen.append(list(batch))

    harness = Harness(monkeypatch, handler)
    envelopes = [envelope(i) for i in range(5)]
    for e in envelopes:
        harness.produce(e.to_json_bytes())
    harness.start()
    await harness.until(lambda: harness.committed() == 5)
    await harness.stop()

    assert len(seen) == 1
    assert [d.envelope.id for d in seen[0]] == [e.id for e in envelopes]
    assert [d.offset for d in seen[0]] == [0, 1, 2, 3, 4]
    assert harness.commits() == [("commit", TOPIC, 0, 5)]
    consumer = harness.fake_consumers[0]
    assert consumer.config["enable_auto_commit"] is False
    assert consumer.config["isolation_level"] == "read_committed"
    assert consumer.config["auto_offset_reset"] == "earliest"
    assert consumer.stopped


async def test_undecodable_message_is_dead_lettered_and_acknowledged_before_the_commit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handled: list[int] = []

    async def handler(batch: Sequence[Delivered]) -> None:
        handled.extend(d.offset for d in batch)

    harness = Harness(monkeypatch, handler)
    harness.produce(envelope(1).to_json_bytes())
    harness.produce(b"\x00not json", key=b"poison-key")
    harness.produce(envelope(2).to_json_bytes())
    harness.start()
    await harness.until(lambda: harness.committed() == 3)
    await harness.stop()

    assert handled == [0, 2]
    dead = harness.broker.records(DEAD_LETTERS)
    assert len(dead) == 1
    assert dead[0].value == b"\x00not json"
    assert dead[0].key == b"poison-key"
    info = parse_dead_letter_headers(dead[0].headers)
    assert info.reason.startswith("not JSON")
    assert (info.original_topic, info.original_partition, info.original_offset) == (TOPIC, 0, 1)
    assert info.consumer_group == "g"
    kinds = [e[0] for e in harness.broker.events]
    assert kinds.index("ack") < kinds.index("commit"), harness.broker.events


async def test_failing_message_is_retried_alone_then_dead_lettered_and_the_rest_handled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[list[int]] = []
    bad_offset = 1

    async def handler(batch: Sequence[Delivered]) -> None:
        calls.append([d.offset for d in batch])
        if any(d.offset == bad_offset for d in batch):
            raise ValueError("cannot apply this one")

    harness = Harness(monkeypatch, handler, max_attempts=3)
    for i in range(3):
        harness.produce(envelope(i).to_json_bytes())
    harness.start()
    await harness.until(lambda: harness.committed() == 3)
    await harness.stop()

    # The batch once, then one by one: offset 1 three times in all (the batch call counts only
    # for a single-message batch), the others once each.
    assert calls[0] == [0, 1, 2]
    assert calls[1:] == [[0], [1], [1], [1], [2]]
    dead = harness.broker.records(DEAD_LETTERS)
    assert len(dead) == 1
    info = parse_dead_letter_headers(dead[0].headers)
    assert info.original_offset == bad_offset
    assert info.reason.startswith("ValueError: cannot apply this one")
    assert "failed 3 times" in info.reason


async def test_permanent_error_is_dead_lettered_without_retrying(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[int]] = []

    async def handler(batch: Sequence[Delivered]) -> None:
        calls.append([d.offset for d in batch])
        raise PermanentError("contact has no valid phone number")

    harness = Harness(monkeypatch, handler, max_attempts=5)
    harness.produce(envelope().to_json_bytes())
    harness.start()
    await harness.until(lambda: harness.committed() == 1)
    await harness.stop()

    assert calls == [[0]]
    info = parse_dead_letter_headers(harness.broker.records(DEAD_LETTERS)[0].headers)
    assert info.reason == "PermanentError: contact has no valid phone number"


async def test_transient_errors_are_retried_without_commit_and_never_dead_lettered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempts = 0

    async def handler(batch: Sequence[Delivered]) -> None:
        nonlocal attempts
        attempts += 1
        assert harness.committed() is None
        if attempts <= 6:  # more than max_attempts: transient failures do not count
            raise sa_exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("db down"))

    harness = Harness(monkeypatch, handler, max_attempts=2)
    harness.produce(envelope(1).to_json_bytes())
    harness.produce(envelope(2).to_json_bytes())
    harness.start()
    await harness.until(lambda: harness.committed() == 2)
    await harness.stop()

    assert attempts == 7
    assert harness.broker.records(DEAD_LETTERS) == []
    assert harness.commits() == [("commit", TOPIC, 0, 2)]


async def test_stop_while_waiting_out_a_transient_error_commits_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempts = 0

    async def handler(batch: Sequence[Delivered]) -> None:
        nonlocal attempts
        attempts += 1
        raise OSError("database unreachable")

    harness = Harness(monkeypatch, handler, backoff_initial_s=0.05, backoff_max_s=0.05)
    harness.produce(envelope().to_json_bytes())
    harness.start()
    await harness.until(lambda: attempts >= 2)
    await asyncio.wait_for(harness.stop(), timeout=5)

    assert harness.commits() == []
    assert harness.broker.records(DEAD_LETTERS) == []
    # While it waited, the partition was paused (polled without fetching), and resumed after.
    assert harness.fake_consumers[0].paused() == set()


async def test_stop_lets_the_batch_in_flight_finish_and_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def handler(batch: Sequence[Delivered]) -> None:
        entered.set()
        await release.wait()

    harness = Harness(monkeypatch, handler)
    harness.produce(envelope().to_json_bytes())
    harness.start()
    await asyncio.wait_for(entered.wait(), timeout=5)
    stopping = asyncio.create_task(harness.consumer.stop())
    await asyncio.sleep(0.05)
    assert not stopping.done(), "stop() must wait for the batch in flight"
    release.set()
    await asyncio.wait_for(stopping, timeout=5)
    assert harness.committed() == 1


async def test_dead_letter_is_resent_until_acknowledged(monkeypatch: pytest.MonkeyPatch) -> None:
    async def handler(batch: Sequence[Delivered]) -> None:
        pass

    harness = Harness(monkeypatch, handler)
    harness.producer.failing_acks = 2
    harness.produce(b"{}")
    harness.start()
    await harness.until(lambda: harness.committed() == 1)
    await harness.stop()

    kinds = [e[0] for e in harness.broker.events]
    assert kinds == ["ack-failed", "ack-failed", "ack", "commit"]
    assert len(harness.broker.records(DEAD_LETTERS)) == 1


async def test_results_of_a_revoked_partition_are_not_committed(monkeypatch: pytest.MonkeyPatch) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def handler(batch: Sequence[Delivered]) -> None:
        entered.set()
        await release.wait()

    harness = Harness(monkeypatch, handler, revoke_grace_s=0.05)
    harness.produce(envelope().to_json_bytes())
    harness.start()
    await asyncio.wait_for(entered.wait(), timeout=5)
    fake = harness.fake_consumers[0]
    await fake.revoke({TP0})  # the batch does not finish within the grace period
    fake.positions[TP0] = 0  # and the partition comes back (reassigned to us), from the last commit
    release.set()
    await harness.until(lambda: harness.committed() == 1)
    await harness.stop()

    # The fenced batch committed nothing; the commit came from the redelivery.
    assert harness.commits() == [("commit", TOPIC, 0, 1)]


async def test_revocation_waits_for_a_batch_that_finishes_within_the_grace_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    entered = asyncio.Event()

    async def handler(batch: Sequence[Delivered]) -> None:
        entered.set()
        await asyncio.sleep(0.05)

    harness = Harness(monkeypatch, handler, revoke_grace_s=5)
    harness.produce(envelope().to_json_bytes())
    harness.start()
    await asyncio.wait_for(entered.wait(), timeout=5)
    await harness.fake_consumers[0].revoke({TP0})
    # on_partitions_revoked returned only after the batch committed.
    assert harness.committed() == 1
    await harness.stop()


def test_producer_is_idempotent_with_acks_all() -> None:
    async def build() -> Any:
        settings = ServiceSettings(service_name="unit", kafka_bootstrap_servers="127.0.0.1:1")
        return kafka_module.create_producer(settings)

    producer = asyncio.run(build())
    # aiokafka keeps these privately; they are what the constructor arguments became.
    assert producer._txn_manager is not None  # only set up when enable_idempotence=True
    assert producer._sender._acks == -1  # acks="all"
    assert producer._key_serializer("subject-1") == b"subject-1"
    assert producer._key_serializer(b"raw") == b"raw"


async def test_stop_during_a_retry_backoff_commits_only_the_prefix_already_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[list[int]] = []

    async def handler(batch: Sequence[Delivered]) -> None:
        calls.append([d.offset for d in batch])
        if any(d.offset == 1 for d in batch):
            raise ValueError("not yet")

    harness = Harness(monkeypatch, handler, max_attempts=5, backoff_initial_s=0.2, backoff_max_s=0.2)
    for i in range(3):
        harness.produce(envelope(i).to_json_bytes())
    harness.start()
    await harness.until(lambda: [1] in calls)  # offset 0 done alone, offset 1 failed, backing off
    await asyncio.wait_for(harness.stop(), timeout=5)

    assert calls == [[0, 1, 2], [0], [1]]
    # Offset 0 is done and committed; 1 and 2 are left for the next owner, nothing dead-lettered.
    assert harness.commits() == [("commit", TOPIC, 0, 1)]
    assert harness.broker.records(DEAD_LETTERS) == []


async def test_types_the_handler_does_not_act_on_are_passed_over_undecoded_and_committed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[Delivered] = []

    async def handler(batch: Sequence[Delivered]) -> None:
        seen.extend(batch)

    harness = Harness(monkeypatch, handler, handled_types={"ActionDeleted"})
    wanted = envelope(1)
    harness.produce(wanted.to_json_bytes(), headers=wanted.kafka_headers())
    # a type this consumer ignores: not even decoded, so its broken body is not dead-lettered here
    harness.produce(b"\x00not json", headers=[("type", b"ActionQueued"), ("version", b"2")])
    without_headers = envelope(2)
    harness.produce(without_headers.to_json_bytes())  # no type header: decoded as usual
    harness.start()
    await harness.until(lambda: harness.committed() == 3)
    await harness.stop()

    assert [d.envelope.id for d in seen] == [wanted.id, without_headers.id]
    assert [d.offset for d in seen] == [0, 2]
    assert harness.broker.records(DEAD_LETTERS) == []
