"""Kafka plumbing: the one producer factory, topic creation, and the one consumer loop.

The consumer loop's rules (see docs/decisions/0005):

* Offsets travel with messages (``Delivered``) and the loop commits ``last offset + 1`` per
  partition, explicitly, only after the durable step: the handler returned (it committed its
  database transaction) and every dead letter of the batch was acknowledged by the broker.
  Auto-commit is off and ``commit()`` is never called without offsets.
* A message is never skipped silently: it is handled, or dead-lettered with the reason, or not
  committed (and so redelivered).
* Transient failures (database or broker unreachable) are retried with backoff, forever, without
  committing. While it waits, the loop pauses its partitions and keeps polling, so it keeps its
  group membership instead of exceeding ``max_poll_interval_ms``.
* When a rebalance revokes a partition, the loop gives the batch in flight a short grace period
  to finish and commit; after that the batch's results for that partition are never committed
  (the new owner starts again from the last commit; handlers dedupe by envelope id).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import asyncpg
import sqlalchemy.exc as sa_exc
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError, for_code

from manual_actions import faults
from manual_actions import kafka_metrics as metrics
from manual_actions.contracts import Envelope, InvalidMessage, decode, registry
from manual_actions.contracts import topics as topic_names
from manual_actions.contracts.dead_letters import dead_letter_headers
from manual_actions.contracts.fast import fast_decode
from manual_actions.faults import crash_point
from manual_actions.settings import ServiceSettings
from manual_actions.waiting import wait_event

log = logging.getLogger(__name__)


class Delivered(NamedTuple):
    """One decoded message with where it came from (offsets travel with messages).

    Immutable; a named tuple rather than a frozen dataclass because one is built per consumed
    message, and a frozen dataclass's ``__init__`` costs about four times as much."""

    envelope: Envelope[Any]
    topic: str
    partition: int
    offset: int


BatchHandler = Callable[[Sequence[Delivered]], Awaitable[None]]


class PermanentError(Exception):
    """Raised by a handler for a message that can never succeed; it is dead-lettered with this reason."""


class TransientError(Exception):
    """Raised by a handler when a dependency is unavailable: retried with backoff, never dead-lettered.

    Database and broker connection errors are recognised without it (see ``is_transient``).
    """


# --- producer and topics -----------------------------------------------------------------------


def _key_bytes(key: str | bytes | None) -> bytes | None:
    # Keys are entity ids given as str; dead letters pass the original key bytes through unchanged.
    if key is None or isinstance(key, bytes):
        return key
    return key.encode()


def create_producer(settings: ServiceSettings, *, compression_type: str | None = None) -> AIOKafkaProducer:
    """Idempotent producer, acks=all, JSON bytes in, keys as UTF-8 strings.

    Values must already be bytes (``envelope.to_json_bytes()``); keys may be ``str`` (encoded as
    UTF-8) or ``bytes``. Not started: the caller awaits ``producer.start()`` and ``stop()``.
    Idempotence keeps the order of messages within a partition even when sends are retried.
    """
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=settings.kafka_client_id or settings.service_name,
        enable_idempotence=True,
        acks="all",
        # A few milliseconds let the relay's sends of one batch share requests without adding
        # noticeable latency to a single event.
        linger_ms=5,
        compression_type=compression_type,
        key_serializer=_key_bytes,
    )


@dataclass(frozen=True)
class TopicSpec:
    """What ``ensure_topics`` needs to know about one topic."""

    name: str
    partitions: int = 6
    cleanup_policy: str = "delete"
    retention_ms: int | None = None


def registry_topics() -> list[TopicSpec]:
    """Every topic of the registry (``manual_actions.contracts.registry``)."""
    return [
        TopicSpec(
            name=t.name,
            partitions=t.partitions,
            cleanup_policy=t.cleanup_policy,
            retention_ms=t.retention_ms,
        )
        for t in registry.topics()
    ]


# Kafka's error code for "topic already exists": another process created it first.
_TOPIC_ALREADY_EXISTS = 36


async def ensure_topics(
    bootstrap_servers: str,
    *,
    replication_factor: int | None = None,
    topics: Iterable[TopicSpec] | None = None,
    ready_timeout_s: float = 30.0,
) -> None:
    """Create every topic of the registry that does not exist yet (partitions, cleanup policy).

    ``replication_factor`` defaults to the ``KAFKA_REPLICATION_FACTOR`` environment variable, or 1
    (a single local broker). Existing topics are left as they are (a partition count that differs
    from the registry is logged as a warning), and losing a creation race to another process is
    not an error. Returns once every created topic has a leader for each
    partition. ``topics`` replaces the registry's list (tests create topics of their own).
    """
    if replication_factor is None:
        replication_factor = int(os.environ.get("KAFKA_REPLICATION_FACTOR", "1"))
    wanted = list(topics) if topics is not None else registry_topics()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t.name not in existing]
        await _warn_about_partition_drift(admin, [t for t in wanted if t.name in existing])
        if not missing:
            return
        new_topics = []
        for spec in missing:
            configs = {"cleanup.policy": spec.cleanup_policy}
            if spec.retention_ms is not None:
                configs["retention.ms"] = str(spec.retention_ms)
            new_topics.append(NewTopic(spec.name, spec.partitions, replication_factor, topic_configs=configs))
        response = await admin.create_topics(new_topics)
        for topic_error in response.topic_errors:
            name, code = topic_error[0], topic_error[1]
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                message = topic_error[2] if len(topic_error) > 2 else ""
                raise for_code(code)(f"creating topic {name}: {message}")
        log.info("created topics", extra={"topics": [t.name for t in missing]})
        await _wait_until_ready(admin, [t.name for t in missing], ready_timeout_s)
    finally:
        await admin.close()


async def _warn_about_partition_drift(admin: AIOKafkaAdminClient, specs: list[TopicSpec]) -> None:
    # Never changed automatically: adding partitions moves keys and breaks per-key order.
    if not specs:
        return
    wanted = {t.name: t.partitions for t in specs}
    for described in await admin.describe_topics(list(wanted)):
        actual = len(described["partitions"])
        if described["error_code"] == 0 and actual != wanted[described["topic"]]:
            log.warning(
                "topic has another partition count than the registry says",
                extra={"topic": described["topic"], "actual": actual, "registry": wanted[described["topic"]]},
            )


async def _wait_until_ready(admin: AIOKafkaAdminClient, names: list[str], timeout_s: float) -> None:
    """Wait until every partition of ``names`` has a leader, so producing right away succeeds."""
    deadline = time.monotonic() + timeout_s
    while True:
        described = await admin.describe_topics(names)
        pending = [
            d["topic"]
            for d in described
            if d["error_code"] != 0 or not d["partitions"] or any(p["leader"] < 0 for p in d["partitions"])
        ]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics not ready after {timeout_s}s: {', '.join(sorted(pending))}")
        await asyncio.sleep(0.1)


# --- transient errors --------------------------------------------------------------------------

# SQLSTATE classes/codes that mean "try again later", not "this message is bad":
# 08 connection exception, 40001 serialization failure, 40P01 deadlock, 53300 too many
# connections, 57P01-57P03 server shutting down / starting up.
_TRANSIENT_SQLSTATE_PREFIXES = ("08",)
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "53300", "57P01", "57P02", "57P03"})


def _transient_one(exc: BaseException) -> bool:
    if isinstance(exc, TransientError | OSError | TimeoutError):
        return True
    if isinstance(exc, KafkaError):
        return bool(exc.retriable)
    if isinstance(exc, sa_exc.OperationalError | sa_exc.DisconnectionError | sa_exc.TimeoutError):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(
        exc,
        asyncpg.PostgresConnectionError
        | asyncpg.ConnectionDoesNotExistError
        | asyncpg.CannotConnectNowError
        | asyncpg.TooManyConnectionsError,
    ):
        return True
    sqlstate = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    if isinstance(sqlstate, str):
        return sqlstate in _TRANSIENT_SQLSTATES or sqlstate.startswith(_TRANSIENT_SQLSTATE_PREFIXES)
    return False


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` (or what it wraps) means a dependency is unavailable, not that the message is bad.

    Follows SQLAlchemy's ``orig`` and explicit ``raise ... from`` causes, so a driver's connection
    error wrapped by SQLAlchemy counts. ``PermanentError`` is never transient.
    """
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen or isinstance(current, PermanentError):
            continue
        seen.add(id(current))
        if _transient_one(current):
            return True
        orig = getattr(current, "orig", None)
        if isinstance(orig, BaseException):
            todo.append(orig)
        if current.__cause__ is not None:
            todo.append(current.__cause__)
    return False


# --- decoding ------------------------------------------------------------------------------------


def decode_record(value: bytes | None, headers: Sequence[tuple[str, bytes]] | None) -> Envelope[Any]:
    """``contracts.decode`` with a fast path: same result, same ``InvalidMessage`` reasons.

    When the record's ``type``/``version`` headers (which every producer of ours sets, see
    ``Envelope.kafka_headers``) name the latest version of a known type, the bytes are validated
    in one step by that envelope's validator derived from the contract (``contracts.fast``:
    pydantic-core's JSON parser, the envelope's type/version check inside the schema) instead of
    ``json.loads`` plus ``model_validate``. It accepts only what ``decode`` accepts and returns the
    same envelope. Anything else (another spelling of the version header included), and anything
    it refuses, goes through ``decode``, so the reason of a dead letter is always the codec's.
    """
    if value is not None and headers:
        message_type = message_version = b""
        for name, header in headers:
            if name == "type":
                message_type = header
            elif name == "version":
                message_version = header
        envelope = fast_decode(value, message_type, message_version)
        if envelope is not None:
            return envelope
    return decode(value)


# --- the consumer loop ---------------------------------------------------------------------------


class _Abandon(Exception):
    """The batch in flight is given up: stopping, or its partitions were revoked."""


class _Item(NamedTuple):
    # A named tuple: one per consumed message, so the cheapest object to build.
    record: ConsumerRecord[bytes, bytes]
    delivered: Delivered
    tp: TopicPartition  # the record's, shared by the items of one partition


@dataclass
class _Batch:
    records: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    # Partitions revoked while this batch was in flight (after the grace period): never committed.
    fenced: set[TopicPartition] = field(default_factory=set)
    # Offsets fully dealt with (handled or dead-lettered), for committing a prefix when stopping.
    done: set[tuple[TopicPartition, int]] = field(default_factory=set)
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def tps(self) -> set[TopicPartition]:
        return set(self.records)

    def next_offsets(self, only_done: bool) -> dict[TopicPartition, int]:
        """Offset to commit per partition: past everything, or past the prefix of done offsets."""
        result: dict[TopicPartition, int] = {}
        for tp, records in self.records.items():
            if tp in self.fenced or not records:
                continue
            if not only_done:
                result[tp] = records[-1].offset + 1
                continue
            next_offset = None
            for record in records:
                if (tp, record.offset) not in self.done:
                    break
                next_offset = record.offset + 1
            if next_offset is not None:
                result[tp] = next_offset
        return result


class _Listener(ConsumerRebalanceListener):
    def __init__(self, owner: BatchConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._owner._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._owner._on_assigned(set(assigned))


class BatchConsumer:
    """The consumer loop every service uses.

    Fetches up to ``max_records`` messages, decodes them (undecodable ones go to the dead-letter
    topic with the reason), calls ``handler`` once with the decoded batch, and commits offset + 1
    per partition only after the handler returned. If the handler raises, the batch is retried
    message by message; a message that raises PermanentError (or any non-transient error
    ``max_attempts`` times) is dead-lettered with the reason, transient errors (database or broker
    unavailable) are retried with backoff and never dead-lettered. Auto-commit is off.

    The handler must be idempotent (record each envelope id with ``outbox.first_time_seen`` in the
    transaction of its effect): a batch is redelivered after a crash, a rebalance or a failure of
    another message of the same batch. Messages of one partition reach the handler in offset
    order. It must not take longer than ``max_poll_interval_ms`` for one call (never call an
    outside service from it: store a command and let a worker do the slow part).

    ``producer`` is started and stopped by the caller; it sends the dead letters.

    ``handled_types``, when given, names the message types the handler acts on: a record whose
    ``type`` header names another type is passed over without being decoded (and committed like the
    rest), which spares a consumer of a busy shared topic from decoding what it would ignore. A
    record without that header is decoded as usual (and dead-lettered if it cannot be).
    """

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        group_id: str,
        topics: Sequence[str],
        handler: BatchHandler,
        producer: AIOKafkaProducer,
        max_attempts: int = 3,
        max_poll_interval_ms: int = 300_000,
        session_timeout_ms: int = 10_000,
        revoke_grace_s: float = 5.0,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 10.0,
        handled_types: Collection[str] | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._settings = settings
        self._group_id = group_id
        self._topics = list(topics)
        self._handler = handler
        self._producer = producer
        self._max_attempts = max_attempts
        self._max_poll_interval_ms = max_poll_interval_ms
        self._session_timeout_ms = session_timeout_ms
        self._revoke_grace_s = revoke_grace_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._handled_types = (
            None if handled_types is None else frozenset(t.encode() for t in handled_types)
        )
        self._consumer: AIOKafkaConsumer | None = None
        self._inflight: _Batch | None = None
        self._rebalancing = False
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._run_task: asyncio.Task[Any] | None = None

    @property
    def group_id(self) -> str:
        return self._group_id

    def assignment(self) -> set[TopicPartition]:
        """Partitions currently assigned to this consumer (empty before the first assignment)."""
        return set(self._consumer.assignment()) if self._consumer is not None else set()

    async def run(self) -> None:
        """Consume until ``stop()``."""
        if self._run_task is not None:
            raise RuntimeError("BatchConsumer.run() is already running or has run")
        self._run_task = asyncio.current_task()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.kafka_bootstrap_servers,
            client_id=self._settings.kafka_client_id or self._settings.service_name,
            group_id=self._group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_interval_ms=self._max_poll_interval_ms,
            session_timeout_ms=self._session_timeout_ms,
            heartbeat_interval_ms=max(1000, self._session_timeout_ms // 3),
        )
        consumer.subscribe(self._topics, listener=_Listener(self))
        self._consumer = consumer
        try:
            await consumer.start()
            log.info("consumer started", extra={"group": self._group_id, "topics": self._topics})
            stop_wait = asyncio.ensure_future(self._stopping.wait())
            try:
                while not self._stopping.is_set():
                    fetched = await self._fetch(consumer, stop_wait)
                    if fetched:
                        await self._process(fetched)
            finally:
                stop_wait.cancel()
        finally:
            # Nothing is committed here: auto-commit is off and every commit was explicit.
            await consumer.stop()
            self._stopped.set()
            log.info("consumer stopped", extra={"group": self._group_id})

    async def stop(self) -> None:
        """Stop after the batch in flight: it finishes and commits, unless it would have to wait
        (a backoff after a failure). Then it is given up: what was already handled or
        dead-lettered is committed, the rest is redelivered to the next owner."""
        self._stopping.set()
        task = self._run_task
        if task is None or task is asyncio.current_task() or task.done():
            return
        await self._stopped.wait()

    # -- fetching -------------------------------------------------------------------------------

    async def _fetch(
        self, consumer: AIOKafkaConsumer, stop_wait: asyncio.Future[Any]
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        # getmany can wait for a (re)assignment without bound, so race it against stop().
        fetch = asyncio.ensure_future(
            consumer.getmany(
                timeout_ms=self._settings.consumer_batch_timeout_ms,
                max_records=self._settings.consumer_batch_max_records,
            )
        )
        done, _ = await asyncio.wait({fetch, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if fetch not in done:
            # Cancelled before records were handed over, so no position moved.
            fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError, KafkaError):
                await fetch
            return {}
        try:
            return fetch.result()
        except KafkaError as exc:
            if not exc.retriable:
                raise
            log.warning("fetch failed, retrying", extra={"group": self._group_id, "error": repr(exc)})
            await asyncio.sleep(self._backoff_initial_s)
            return {}

    # -- one batch --------------------------------------------------------------------------------

    async def _process(self, fetched: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        batch = _Batch(records={tp: sorted(rs, key=lambda r: r.offset) for tp, rs in fetched.items() if rs})
        self._inflight = batch
        try:
            await self._process_batch(batch)
        except _Abandon:
            offsets = batch.next_offsets(only_done=True)
            log.warning(
                "batch given up before it finished; its rest will be redelivered",
                extra={"group": self._group_id, "committing": {str(tp): o for tp, o in offsets.items()}},
            )
            await self._commit(batch, offsets, retry=False)
        finally:
            self._inflight = None
            batch.finished.set()
            self._resume_paused()

    async def _process_batch(self, batch: _Batch) -> None:
        crash_point(faults.CONSUMER_AFTER_FETCH)
        items: list[_Item] = []
        for tp, records in batch.records.items():
            metrics.CONSUMER_MESSAGES.labels(self._group_id, tp.topic).inc(len(records))
            for record in records:
                if self._handled_types is not None and self._passed_over(record):
                    batch.done.add((tp, record.offset))
                    continue
                try:
                    envelope = decode_record(record.value, record.headers)
                except InvalidMessage as exc:
                    # Acknowledged before we go on, so it is durable before any commit past it.
                    await self._dead_letter(batch, record, exc.reason, reason_class="invalid")
                    continue
                delivered = Delivered(envelope, record.topic, record.partition, record.offset)
                items.append(_Item(record, delivered, tp))
        if items:
            await self._handle(batch, items)
        crash_point(faults.CONSUMER_AFTER_HANDLER)
        await self._commit(batch, batch.next_offsets(only_done=False), retry=True)
        metrics.CONSUMER_BATCHES.labels(self._group_id).inc()

    def _passed_over(self, record: ConsumerRecord[bytes, bytes]) -> bool:
        """True when the record's ``type`` header names a type the handler does not act on."""
        assert self._handled_types is not None
        for name, value in record.headers or ():
            if name == "type":
                return value not in self._handled_types
        return False

    async def _call_handler(self, deliveries: Sequence[Delivered]) -> None:
        started = time.perf_counter()
        try:
            await self._handler(deliveries)
        finally:
            elapsed = time.perf_counter() - started
            metrics.CONSUMER_HANDLER_DURATION.labels(self._group_id).observe(elapsed)
            if elapsed > self._max_poll_interval_ms / 2000:
                # Past max_poll_interval_ms the group evicts this member and the batch is redone
                # elsewhere: warn while there is still margin.
                log.warning(
                    "handler call took more than half of max_poll_interval_ms",
                    extra={"group": self._group_id, "seconds": round(elapsed, 3), "count": len(deliveries)},
                )

    async def _handle(self, batch: _Batch, items: list[_Item]) -> None:
        """The whole batch at once; after a non-transient failure, one message at a time."""
        transient_failures = 0
        while True:
            live = [i for i in items if i.tp not in batch.fenced]
            if not live:
                raise _Abandon()
            try:
                await self._call_handler([i.delivered for i in live])
            except Exception as exc:
                if is_transient(exc):
                    transient_failures += 1
                    self._log_failure(exc, live, "transient", transient_failures)
                    await self._backoff(batch, transient_failures)
                    continue
                if len(live) > 1:
                    self._log_failure(exc, live, "error", 1, "batch failed, retrying its messages one by one")
                elif not isinstance(exc, PermanentError):
                    self._log_failure(exc, live, "error", 1)
                # With a single message the failed call was already that message's first attempt.
                first_failure = exc if len(live) == 1 else None
                break
            batch.done.update((i.tp, i.record.offset) for i in live)
            return
        for item in live:
            if item.tp in batch.fenced:
                continue
            await self._handle_one(batch, item, first_failure)
            batch.done.add((item.tp, item.record.offset))

    async def _handle_one(self, batch: _Batch, item: _Item, first_failure: Exception | None) -> None:
        """Retry one message: transient failures forever, other errors up to ``max_attempts``."""
        errors = 0
        transient_failures = 0
        exc = first_failure
        while True:
            if exc is None:
                # A stop does not interrupt the batch here, only where it would have to wait.
                self._check_abandon(batch, item.tp, on_stop=False)
                try:
                    await self._call_handler([item.delivered])
                    return
                except Exception as raised:
                    exc = raised
                if is_transient(exc):
                    transient_failures += 1
                    self._log_failure(exc, [item], "transient", transient_failures)
                    await self._backoff(batch, transient_failures, item.tp)
                    exc = None
                    continue
                if not isinstance(exc, PermanentError):
                    self._log_failure(exc, [item], "error", errors + 1)
            if isinstance(exc, PermanentError):
                reason = f"PermanentError: {exc}" if str(exc) else "PermanentError"
                await self._dead_letter(batch, item.record, reason, reason_class="permanent")
                return
            errors += 1
            transient_failures = 0
            if errors >= self._max_attempts:
                reason = f"{type(exc).__name__}: {exc} (failed {errors} times)"
                await self._dead_letter(batch, item.record, reason, reason_class="exhausted")
                return
            await self._backoff(batch, errors, item.tp)
            exc = None

    def _log_failure(
        self,
        exc: BaseException,
        items: Sequence[_Item],
        kind: str,
        attempt: int,
        message: str = "handler failed, will retry",
    ) -> None:
        metrics.CONSUMER_HANDLER_FAILURES.labels(self._group_id, kind).inc()
        first = items[0].delivered
        log.warning(
            message,
            exc_info=exc if kind == "error" else None,
            extra={
                "group": self._group_id,
                "kind": kind,
                "error": repr(exc),
                "attempt": attempt,
                "messages": len(items),
                "first_message": f"{first.topic}/{first.partition}@{first.offset}",
                "message_id": str(first.envelope.id) if len(items) == 1 else None,
            },
        )

    # -- dead letters ---------------------------------------------------------------------------

    async def _dead_letter(
        self, batch: _Batch, record: ConsumerRecord[bytes, bytes], reason: str, *, reason_class: str
    ) -> None:
        """Produce the dead letter and wait for the broker's acknowledgement (retrying while it is down)."""
        tp = TopicPartition(record.topic, record.partition)
        headers = dead_letter_headers(
            reason=reason,
            original_topic=record.topic,
            original_partition=record.partition,
            original_offset=record.offset,
            consumer_group=self._group_id,
            original_headers=list(record.headers or ()),
        )
        failures = 0
        while True:
            try:
                ack = await self._producer.send(
                    topic_names.DEAD_LETTERS, value=record.value, key=record.key, headers=headers
                )
                await ack
                break
            except Exception as exc:
                if not is_transient(exc):
                    raise
                failures += 1
                log.warning(
                    "dead letter not acknowledged, retrying",
                    extra={"group": self._group_id, "error": repr(exc), "attempt": failures},
                )
                await self._backoff(batch, failures, tp)
        batch.done.add((tp, record.offset))
        metrics.CONSUMER_DEAD_LETTERS.labels(self._group_id, record.topic, reason_class).inc()
        log.error(
            "message dead-lettered",
            extra={
                "group": self._group_id,
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "reason": reason,
                "reason_class": reason_class,
            },
        )

    # -- committing -----------------------------------------------------------------------------

    async def _commit(self, batch: _Batch, offsets: dict[TopicPartition, int], *, retry: bool) -> None:
        consumer = self._consumer
        assert consumer is not None
        failures = 0
        while True:
            assigned = consumer.assignment()
            # Never for a partition revoked meanwhile: its new owner may already be further.
            todo = {tp: o for tp, o in offsets.items() if tp not in batch.fenced and tp in assigned}
            if not todo:
                return
            try:
                await consumer.commit(todo)
            except (CommitFailedError, IllegalStateError) as exc:
                # The group moved on without us; the new owner restarts from the last commit.
                log.warning(
                    "commit refused after a rebalance", extra={"group": self._group_id, "error": repr(exc)}
                )
                return
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if not retry:
                    log.warning("commit failed", extra={"group": self._group_id, "error": repr(exc)})
                    return
                failures += 1
                log.warning("commit failed, retrying", extra={"group": self._group_id, "error": repr(exc)})
                await self._backoff(batch, failures)
                continue
            for tp, offset in todo.items():
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    metrics.CONSUMER_LAG.labels(self._group_id, tp.topic, str(tp.partition)).set(
                        max(0, highwater - offset)
                    )
            return

    # -- waiting without losing the partitions --------------------------------------------------

    def _check_abandon(
        self, batch: _Batch, tp: TopicPartition | None = None, *, on_stop: bool = True
    ) -> None:
        if on_stop and self._stopping.is_set():
            raise _Abandon()
        if batch.tps <= batch.fenced or (tp is not None and tp in batch.fenced):
            raise _Abandon()

    async def _backoff(self, batch: _Batch, attempt: int, tp: TopicPartition | None = None) -> None:
        """Sleep with exponential backoff and jitter, polling meanwhile so the group keeps us."""
        delay = min(self._backoff_max_s, self._backoff_initial_s * 2 ** min(attempt - 1, 16))
        delay *= random.uniform(0.8, 1.2)
        deadline = time.monotonic() + delay
        while True:
            self._check_abandon(batch, tp)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await self._keep_membership()
            await wait_event(self._stopping, min(remaining, 1.0))

    async def _keep_membership(self) -> None:
        """Poll with every assigned partition paused: resets the max-poll-interval clock, fetches nothing."""
        consumer = self._consumer
        if consumer is None or self._rebalancing:
            return
        assigned = consumer.assignment()
        if not assigned:
            return
        consumer.pause(*assigned)
        try:
            stray = await consumer.getmany(*assigned, timeout_ms=0)
        except KafkaError as exc:
            log.debug("keep-alive poll failed", extra={"error": repr(exc)})
            return
        # A partition assigned between pause() and getmany() was not paused: put its records back.
        for tp, records in stray.items():
            if records:
                consumer.seek(tp, min(r.offset for r in records))

    def _resume_paused(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        paused = consumer.paused()
        if paused:
            consumer.resume(*paused)

    # -- rebalance --------------------------------------------------------------------------------

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        self._rebalancing = True
        batch = self._inflight
        if batch is not None and batch.tps & revoked:
            try:
                await asyncio.wait_for(asyncio.shield(batch.finished.wait()), timeout=self._revoke_grace_s)
            except TimeoutError:
                batch.fenced |= batch.tps & revoked
                log.warning(
                    "partitions revoked while their batch was in flight; their results will not be committed",
                    extra={"group": self._group_id, "partitions": sorted(str(tp) for tp in batch.fenced)},
                )
        for tp in revoked:
            metrics.forget_lag(self._group_id, tp.topic, tp.partition)
        log.info(
            "partitions revoked", extra={"group": self._group_id, "partitions": sorted(map(str, revoked))}
        )

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        self._rebalancing = False
        log.info(
            "partitions assigned", extra={"group": self._group_id, "partitions": sorted(map(str, assigned))}
        )
