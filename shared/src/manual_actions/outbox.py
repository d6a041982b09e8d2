"""Transactional outbox and inbox.

A service adds the envelopes it wants published to the ``outbox`` table in the same transaction
as its state change; ``OutboxRelay`` publishes them in insertion order and marks them published.
Consumers record each processed event id in the ``inbox`` table in the transaction of its effect,
so a redelivered event has no second effect.

Using it in a service:

* Tables: put ``outbox_table(metadata)`` and ``inbox_table(metadata)`` on the service's
  ``MetaData`` (so autogenerate knows them) and call ``create_outbox_tables()`` in the upgrade of
  the service's first migration (``drop_outbox_tables()`` in its downgrade). The helper is frozen:
  a future change of these tables comes as a new, separately named helper for a new migration,
  never as an edit of this one.
* Writing: ``await add_to_outbox(session, topics.ACTION_LIFECYCLE, envelope)`` inside the
  transaction that changes the state. Writes about one subject must be serialised (lock the
  entity's row, which its ``sequence`` number needs anyway): then a later event of a subject
  always has a higher outbox id and is published after the earlier one.
* Consuming: ``if await first_time_seen(session, "action-queue", envelope.id): <apply effect>``
  in the transaction of the effect.
* Publishing: one ``OutboxRelay(engine, producer).run()`` task per process; only one relay per
  database is active at a time (a session-level advisory lock), the others wait as standbys.

Batches: ``batch_record`` (COPY) or ``add_batch_to_outbox`` stage many envelopes of one topic as
one row (value: a JSON array of ``[key, envelope JSON text]``; headers: the marker
``[BATCH_HEADER, "<count>"]`` followed by the headers every envelope of the row carries). The relay
publishes them in their order, each as its own Kafka record, and marks the row once: for a bulk
writer this saves an insert, a select, an update and a delete per envelope. The relay's batch size
counts envelopes, whatever rows carry them (a row larger than the batch size goes alone).

Published rows are kept for ``retention`` (default one day) and then deleted by the relay: they
show an operator what went out and when, and setting ``published_at`` back to NULL republishes a
row. The partial index on unpublished ids keeps the relay's query cheap however many are kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.producer.message_accumulator import BatchBuilder
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    delete,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.schema import SchemaItem

from manual_actions import faults
from manual_actions import kafka_metrics as metrics
from manual_actions.contracts import Envelope
from manual_actions.db import advisory_lock_key, asyncpg_dsn
from manual_actions.faults import crash_point
from manual_actions.kafka import is_transient
from manual_actions.waiting import wait_event

log = logging.getLogger(__name__)

#: The channel ``add_to_outbox`` notifies and the relay listens on.
OUTBOX_CHANNEL = "outbox"
#: Upper size of the record batches the relay builds per partition (below the broker's default
#: ``message.max.bytes`` of 1 MiB).
RECORD_BATCH_BYTES = 512 * 1024
#: First header of a row carrying a batch of envelopes: ``[BATCH_HEADER, "<count>"]``.
BATCH_HEADER = "ma-outbox-batch"
#: Column order of the records ``batch_record`` makes (for ``copy_records_to_table``).
OUTBOX_COPY_COLUMNS = ("message_id", "tenant", "topic", "key", "value", "headers")
#: Session-level advisory lock held by the active relay of a database.
RELAY_LOCK_KEY = advisory_lock_key("manual_actions.outbox.relay")


# --- tables ------------------------------------------------------------------------------------


def _outbox_schema() -> list[SchemaItem]:
    # Fresh objects on every call: a Column can belong to one Table only.
    return [
        Column("id", BigInteger, primary_key=True, autoincrement=True, comment="Publication order."),
        Column("message_id", UUID(as_uuid=True), nullable=False, unique=True, comment="Envelope id."),
        Column("tenant", Text, nullable=False),
        Column("topic", Text, nullable=False),
        Column("key", Text, nullable=False, comment="Kafka key: the envelope's subject."),
        Column("value", JSONB, nullable=False, comment="The envelope."),
        Column(
            "headers", JSONB, nullable=False, server_default=text("'[]'::jsonb"), comment="[[name, text]]"
        ),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("published_at", DateTime(timezone=True), nullable=True),
        Index("ix_outbox_unpublished", "id", postgresql_where=text("published_at IS NULL")),
        Index("ix_outbox_published_at", "published_at", postgresql_where=text("published_at IS NOT NULL")),
    ]


def _inbox_schema() -> list[SchemaItem]:
    return [
        Column("consumer", Text, nullable=False),
        Column("message_id", UUID(as_uuid=True), nullable=False),
        Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        PrimaryKeyConstraint("consumer", "message_id", name="pk_inbox"),
        Index("ix_inbox_processed_at", "processed_at"),
    ]


def outbox_table(metadata: MetaData) -> Table:
    """Define ``outbox`` (id bigserial, message_id uuid unique, topic, key, value jsonb,
    headers jsonb, created_at, published_at nullable) on ``metadata``.

    Also ``tenant`` (the envelope's, for operators filtering a backlog) and two partial indexes.
    """
    return Table("outbox", metadata, *_outbox_schema())


def inbox_table(metadata: MetaData) -> Table:
    """Define ``inbox`` (consumer text, message_id uuid, processed_at; primary key both) on ``metadata``.

    A technical dedupe record: the tenant lives on the effect's own rows, not here.
    """
    return Table("inbox", metadata, *_inbox_schema())


def create_outbox_tables() -> None:
    """Create ``outbox`` and ``inbox`` from inside an Alembic migration's ``upgrade()``."""
    from alembic import op  # only meaningful while Alembic runs a migration

    op.create_table("outbox", *_outbox_schema())
    op.create_table("inbox", *_inbox_schema())


def drop_outbox_tables() -> None:
    """Drop ``inbox`` and ``outbox`` from inside an Alembic migration's ``downgrade()``."""
    from alembic import op

    op.drop_table("inbox")
    op.drop_table("outbox")


# Private table objects for the statements below; services define their own copies on their metadata.
_OUTBOX = outbox_table(MetaData())
_INBOX = inbox_table(MetaData())


# --- writing and deduplicating -------------------------------------------------------------------


async def add_to_outbox(session: AsyncSession | AsyncConnection, topic: str, envelope: Envelope[Any]) -> None:
    """Stage ``envelope`` for publication on ``topic`` (key = envelope.subject) in the caller's transaction.

    Also issues ``NOTIFY outbox`` so the relay wakes at once after commit.
    (PostgreSQL delivers a notification only when its transaction commits, never on rollback.)
    """
    await session.execute(
        insert(_OUTBOX).values(
            message_id=envelope.id,
            tenant=envelope.tenant,
            topic=topic,
            key=envelope.subject,
            value=envelope.to_jsonable(),
            headers=[[name, value.decode()] for name, value in envelope.kafka_headers()],
        )
    )
    await notify_outbox(session)


def _batch(
    headers: Sequence[tuple[str, str]], items: Sequence[tuple[str, str]]
) -> tuple[list[list[str]], list[list[str]]]:
    """The value and headers of a row carrying ``items``."""
    if not items:
        raise ValueError("a batch row needs at least one envelope")
    value = [[key, text] for key, text in items]
    marked = [[BATCH_HEADER, str(len(items))], *([name, text] for name, text in headers)]
    return value, marked


def batch_record(
    topic: str,
    tenant: str,
    headers: Sequence[tuple[str, str]],
    items: Sequence[tuple[str, str]],
) -> tuple[uuid.UUID, str, str, str, str, str]:
    """One outbox row carrying ``items`` (key, envelope as JSON text), in ``OUTBOX_COPY_COLUMNS``
    order, for COPY in the caller's transaction. Every envelope gets ``headers``; the relay
    publishes them in the given order, each value exactly as given. The row's own ``key`` is empty
    (each item has its own) and its ``message_id`` is new (each envelope keeps its id). The caller
    issues ``NOTIFY outbox`` (``notify_outbox``) after staging, as ``add_to_outbox`` does."""
    value, marked = _batch(headers, items)
    return (uuid.uuid4(), tenant, topic, "", json.dumps(value, separators=(",", ":")), json.dumps(marked))


async def add_batch_to_outbox(
    session: AsyncSession | AsyncConnection, topic: str, envelopes: Sequence[Envelope[Any]]
) -> None:
    """Stage ``envelopes`` for publication on ``topic`` in the caller's transaction, in as few rows
    as their headers allow (one per run of consecutive envelopes with the same headers, so their
    order is kept). The relay publishes them as ``add_to_outbox`` rows would be published."""
    runs: list[tuple[list[tuple[str, bytes]], list[Envelope[Any]]]] = []
    for envelope in envelopes:
        headers = envelope.kafka_headers()
        if runs and runs[-1][0] == headers:
            runs[-1][1].append(envelope)
        else:
            runs.append((headers, [envelope]))
    for headers, batch in runs:
        value, marked = _batch(
            [(name, text.decode()) for name, text in headers],
            [(e.subject, json.dumps(e.to_jsonable())) for e in batch],
        )
        await session.execute(
            insert(_OUTBOX).values(
                message_id=uuid.uuid4(),
                tenant=batch[0].tenant,
                topic=topic,
                key="",
                value=value,
                headers=marked,
            )
        )
    if runs:
        await notify_outbox(session)


async def notify_outbox(session: AsyncSession | AsyncConnection) -> None:
    """``NOTIFY outbox``: the relay wakes when the transaction commits."""
    await session.execute(select(func.pg_notify(OUTBOX_CHANNEL, "")))


async def first_time_seen(
    session: AsyncSession | AsyncConnection, consumer: str, message_id: uuid.UUID
) -> bool:
    """Record ``message_id`` as processed by ``consumer``; False when it was already recorded.

    Call it in the transaction of the effect. If another transaction recorded the same id and
    has not committed yet, this waits for it and then returns False (or True if it rolled back).
    """
    statement = (
        insert(_INBOX)
        .values(consumer=consumer, message_id=message_id)
        .on_conflict_do_nothing(index_elements=["consumer", "message_id"])
        .returning(_INBOX.c.message_id)
    )
    result = await session.execute(statement)
    return result.first() is not None


async def prune_inbox(session: AsyncSession | AsyncConnection, older_than: timedelta) -> int:
    """Delete inbox records older than ``older_than``; return how many.

    Only safe beyond the longest time a message can be redelivered (consumer lag plus topic
    retention), so keep ``older_than`` generous (weeks).
    """
    cutoff = datetime.now(UTC) - older_than
    result = await session.execute(delete(_INBOX).where(_INBOX.c.processed_at < cutoff))
    return int(getattr(result, "rowcount", 0) or 0)


# --- the relay -----------------------------------------------------------------------------------


# The oldest pending rows whose envelopes make up at most $1 (always at least the first row): a
# batch row weighs its envelope count (from its first header), any other row 1. The value is
# read (and converted to text) only for the rows taken.
# The oldest pending rows whose envelopes make up at most $1 (always at least the first row): a
# batch row weighs its envelope count (from its first header), any other row 1. One result row per
# envelope: a batch row's items are taken apart by PostgreSQL (jsonb keeps its strings unescaped,
# so this is cheaper than its value as text parsed again in Python), in their order.
_PENDING = (
    """
    SELECT p.id, p.topic, p.weight, p.headers::text AS headers, p.created_at,
        CASE WHEN p.batch THEN i.item->>0 ELSE p.key END AS key,
        CASE WHEN p.batch THEN i.item->>1 ELSE p.value::text END AS value
    FROM (
        SELECT id, topic, key, value, headers, created_at, weight, batch,
            sum(weight) OVER (ORDER BY id) - weight AS before
        FROM (
            SELECT id, topic, key, value, headers, created_at,
                headers->0->>0 = '"""
    + BATCH_HEADER
    + """' AS batch,
                CASE WHEN headers->0->>0 = '"""
    + BATCH_HEADER
    + """'
                    THEN (headers->0->>1)::int ELSE 1 END AS weight
            FROM outbox
            WHERE published_at IS NULL {exclude}
            ORDER BY id
            LIMIT $1
        ) AS pending
    ) AS p
    LEFT JOIN LATERAL jsonb_array_elements(CASE WHEN p.batch THEN p.value END)
        WITH ORDINALITY AS i(item, ord) ON true
    WHERE p.before < $1
    ORDER BY p.id, i.ord
"""
)
_SELECT_PENDING = _PENDING.format(exclude="")
_MARK_PUBLISHED = "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])"
# The SELECT sees the table as it was before the UPDATE of the same statement, hence the exclusion.
_MARK_PUBLISHED_AND_SELECT_NEXT = (
    "WITH marked AS (UPDATE outbox SET published_at = now() WHERE id = ANY($2::bigint[]))"
    + _PENDING.format(exclude="AND id <> ALL($2::bigint[])")
)
_PRUNE_PUBLISHED = "DELETE FROM outbox WHERE published_at < now() - $1::interval"


_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_BLOCKS: dict[int, struct.Struct] = {}


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash of a key, equal to ``aiokafka.partitioner.murmur2`` (the Java client's
    ``Utils.murmur2``) and about twice as fast: the 4-byte blocks are unpacked at once instead of
    byte by byte. The relay hashes every key it publishes; aiokafka's version was the largest part
    of its CPU per message."""
    length = len(data)
    h = 0x9747B28C ^ length
    count = length >> 2
    blocks = _BLOCKS.get(count)
    if blocks is None:
        blocks = _BLOCKS[count] = struct.Struct(f"<{count}I")
    for k in blocks.unpack_from(data):
        k = (k * _M) & _MASK
        k = ((k ^ (k >> 24)) * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    extra = length & 3
    if extra:
        base = length & ~3
        if extra >= 3:
            h ^= data[base + 2] << 16
        if extra >= 2:
            h ^= data[base + 1] << 8
        h = ((h ^ data[base]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


def partition_for(key: bytes, partitions: Sequence[int]) -> int:
    """The partition aiokafka's default partitioner picks for a (non-null) key among ``partitions``
    (all of the topic's, sorted)."""
    return partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]


class OutboxRelay:
    """Publishes outbox rows in id order; one active relay per database (advisory lock).

    Rows are marked published only after the broker acknowledged them, so a crash repeats
    rather than loses a message; consumers dedupe by envelope id.

    The relay works on one dedicated asyncpg connection (not from the engine's pool): it holds
    the session-level advisory lock, LISTENs on ``outbox`` and runs the relay's queries, so if
    that connection dies the lock is released and this relay stops publishing in the same
    moment. A standby retries the lock every ``lock_retry_interval_ms``. ``producer`` is started
    and stopped by the caller (use ``kafka.create_producer``: idempotent, acks=all).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        producer: AIOKafkaProducer,
        *,
        batch_size: int = 500,
        poll_interval_ms: int = 200,
        lock_retry_interval_ms: int = 1000,
        retention: timedelta | None = timedelta(days=1),
        prune_interval_s: float = 300.0,
        backoff_max_s: float = 10.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._dsn = asyncpg_dsn(engine.url)
        self._producer = producer
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_ms / 1000
        self._lock_retry_s = lock_retry_interval_ms / 1000
        self._retention = retention
        self._prune_interval_s = prune_interval_s
        self._backoff_max_s = backoff_max_s
        self._conn: asyncpg.Connection | None = None  # set while this relay holds the lock
        self._conn_lock = asyncio.Lock()  # one query at a time on the dedicated connection
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._run_task: asyncio.Task[Any] | None = None
        self._last_prune = float("-inf")  # prune once right after becoming active
        self._header_cache: dict[str, list[tuple[str, bytes]]] = {}

    @property
    def is_active(self) -> bool:
        """True while this relay holds the lock (it is the one publishing for its database)."""
        return self._conn is not None

    async def run(self) -> None:
        """Publish until ``stop()``; wakes on NOTIFY and at least every poll interval.

        Errors (database or broker unavailable, or anything else) are logged and retried after a
        backoff with a new connection; the relay does not die while the process lives.
        """
        if self._run_task is not None:
            raise RuntimeError("OutboxRelay.run() is already running or has run")
        self._run_task = asyncio.current_task()
        failures = 0
        try:
            while not self._stopping.is_set():
                try:
                    await self._session()
                    failures = 0
                except Exception as exc:
                    failures += 1
                    metrics.OUTBOX_RELAY_ERRORS.inc()
                    log.warning(
                        "outbox relay failed, retrying",
                        exc_info=None if is_transient(exc) else exc,
                        extra={"error": repr(exc), "attempt": failures},
                    )
                    await self._sleep(min(self._backoff_max_s, 0.2 * 2 ** min(failures, 10)))
        finally:
            self._stopped.set()

    async def publish_pending(self) -> int:
        """Publish what is pending now; return how many envelopes were published (a batch row
        counts its envelopes).

        Uses the running relay's connection when it is active; otherwise opens one, and publishes
        only if no other relay holds the lock (returning 0 if one does).
        """
        if self._conn is not None:
            return await self._drain(self._conn)
        conn = await asyncpg.connect(self._dsn)
        try:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_KEY):
                return 0
            try:
                return await self._drain(conn)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", RELAY_LOCK_KEY)
        finally:
            await conn.close()

    async def stop(self) -> None:
        """Stop after the batch in flight (it is acknowledged and marked, or left for a re-send)."""
        self._stopping.set()
        self._wake.set()  # cuts short the wait for NOTIFY or the next poll
        task = self._run_task
        if task is None or task is asyncio.current_task() or task.done():
            return
        await self._stopped.wait()

    # -- internals --------------------------------------------------------------------------------

    async def _sleep(self, seconds: float) -> None:
        """Sleep, returning early on stop()."""
        await wait_event(self._stopping, seconds)

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def _session(self) -> None:
        """One connection's life: wait for the lock, then publish until stop or an error."""
        conn = await asyncpg.connect(self._dsn)
        try:
            while not self._stopping.is_set():
                if await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_KEY):
                    break
                await self._sleep(self._lock_retry_s)
            else:
                return
            await conn.add_listener(OUTBOX_CHANNEL, self._on_notify)
            self._conn = conn
            metrics.OUTBOX_RELAY_ACTIVE.set(1)
            log.info("outbox relay active")
            while not self._stopping.is_set():
                # Cleared before looking, so a NOTIFY arriving meanwhile triggers another look.
                self._wake.clear()
                await self._drain(conn)
                await self._maybe_prune(conn)
                if self._stopping.is_set():
                    break
                await wait_event(self._wake, self._poll_interval_s)
        finally:
            if self._conn is conn:
                self._conn = None
                metrics.OUTBOX_RELAY_ACTIVE.set(0)
                log.info("outbox relay no longer active")
            # Closing the session releases the advisory lock for a standby.
            try:
                async with asyncio.timeout(5):
                    await conn.close()
            except Exception:
                conn.terminate()

    async def _drain(self, conn: asyncpg.Connection) -> int:
        """Publish batch after batch until less than a full batch was pending.

        The statement that marks a full batch published also fetches the next one, so a backlog
        costs one database round trip per batch besides the sends.
        """
        total = 0
        async with self._conn_lock:
            rows: Sequence[asyncpg.Record] = await conn.fetch(_SELECT_PENDING, self._batch_size)
            while True:
                published, rows = await self._publish_batch(conn, rows)
                total += published
                if published < self._batch_size or self._stopping.is_set():
                    return total

    async def _publish_batch(
        self, conn: asyncpg.Connection, rows: Sequence[asyncpg.Record]
    ) -> tuple[int, Sequence[asyncpg.Record]]:
        """Send the envelopes of ``rows``, await every acknowledgement, mark the rows published;
        returns how many envelopes were published and, after a full batch, the next pending rows."""
        if not rows:
            metrics.OUTBOX_OLDEST_UNPUBLISHED_AGE.set(0)
            return 0, []
        oldest: datetime = rows[0]["created_at"]
        metrics.OUTBOX_OLDEST_UNPUBLISHED_AGE.set(max(0.0, (datetime.now(UTC) - oldest).total_seconds()))
        messages = self._messages(rows)
        if hasattr(self._producer, "send_batch"):
            acks = await self._send_in_batches(messages)
        else:
            acks = await self._send_one_by_one(messages)
        # All acknowledged, or this raises and nothing is marked: the batch is sent again.
        await asyncio.gather(*acks)
        crash_point(faults.RELAY_AFTER_SEND)
        ids = list(dict.fromkeys(row["id"] for row in rows))  # a batch row's envelopes share its id
        published = len(rows)
        full = published >= self._batch_size
        following: Sequence[asyncpg.Record] = []
        if full and not self._stopping.is_set():
            following = await conn.fetch(_MARK_PUBLISHED_AND_SELECT_NEXT, self._batch_size, ids)
        else:
            await conn.execute(_MARK_PUBLISHED, ids)
        for topic, count in Counter(row["topic"] for row in rows).items():
            metrics.OUTBOX_PUBLISHED.labels(topic).inc(count)
        if not full:
            metrics.OUTBOX_OLDEST_UNPUBLISHED_AGE.set(0)  # that was all there was
        log.debug(
            "outbox rows published",
            extra={"count": len(rows), "envelopes": published, "first_id": ids[0], "last_id": ids[-1]},
        )
        return published, following

    def _messages(
        self, rows: Sequence[asyncpg.Record]
    ) -> list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]]:
        """(topic, key, value, headers) of every envelope of ``rows`` (one per envelope, in
        publication order); a batch row's marker header is not published."""
        headers_of = self._headers
        return [
            (row["topic"], row["key"].encode(), row["value"].encode(), headers_of(row["headers"]))
            for row in rows
        ]

    async def _send_one_by_one(
        self, messages: Sequence[tuple[str, bytes, bytes, list[tuple[str, bytes]]]]
    ) -> list[Any]:
        """``send()`` per message (any object with aiokafka's ``send`` signature will do)."""
        acks = []
        send = self._producer.send
        for topic, key, value, headers in messages:
            # send() returns once the message is queued, in call order: the idempotent producer
            # keeps that order per partition, so id order is publication order per key.
            acks.append(await send(topic, value=value, key=key, headers=headers))
        return acks

    async def _send_in_batches(
        self, messages: Sequence[tuple[str, bytes, bytes, list[tuple[str, bytes]]]]
    ) -> list[Any]:
        """Build record batches of up to ``RECORD_BATCH_BYTES`` per partition ourselves and submit
        them with ``send_batch``; returns one future per record batch.

        Why: aiokafka's ``send()`` fills batches of the producer's ``max_batch_size`` (16 KiB by
        default, ~17 of our envelopes), and its sender puts one batch per partition in a request
        with one request in flight per broker (idempotence), so a backlog moved at
        partitions x 16 KiB per broker round trip. Large batches move hundreds of envelopes per
        partition per round trip, and skip ``send()``'s per-message bookkeeping.

        Partitions are chosen exactly as ``send()`` chooses them for a key (aiokafka's default,
        Java-compatible murmur2 partitioner; ``partition_for``), so one key's messages stay in one
        partition, in id order. The batches are uncompressed.
        """
        partitions: dict[str, list[int]] = {}
        batches: dict[tuple[str, int], list[BatchBuilder]] = {}
        for topic, key, value, headers in messages:
            known = partitions.get(topic)
            if known is None:
                known = partitions[topic] = sorted(await self._producer.partitions_for(topic))
            partition = partition_for(key, known)
            builders = batches.setdefault((topic, partition), [])
            if (
                not builders
                or builders[-1].append(timestamp=None, key=key, value=value, headers=headers) is None
            ):
                builder = BatchBuilder(RECORD_BATCH_BYTES, 0)
                # The first record always fits, whatever its size (as with send()).
                builder.append(timestamp=None, key=key, value=value, headers=headers)
                builders.append(builder)
        acks = []
        for (topic, partition), builders in batches.items():
            for builder in builders:
                builder.close()
                acks.append(await self._producer.send_batch(builder, topic, partition=partition))
        return acks

    def _headers(self, text: str) -> list[tuple[str, bytes]]:
        """Kafka headers from the stored JSON (a batch row's marker left out); most rows share a
        few distinct header sets, so the parsed form is cached (bounded)."""
        parsed = self._header_cache.get(text)
        if parsed is None:
            parsed = [(name, value.encode()) for name, value in json.loads(text) if name != BATCH_HEADER]
            if len(self._header_cache) >= 1024:
                self._header_cache.clear()
            self._header_cache[text] = parsed
        return parsed

    async def _maybe_prune(self, conn: asyncpg.Connection) -> None:
        if self._retention is None:
            return
        now = asyncio.get_running_loop().time()
        if now - self._last_prune < self._prune_interval_s:
            return
        self._last_prune = now
        async with self._conn_lock:
            status = await conn.execute(_PRUNE_PUBLISHED, self._retention)
        log.debug("published outbox rows pruned", extra={"status": status})
