"""The faust-streaming app that keeps the pending counts (the two stages of ``dashboard.domain.pending``).

Topology (``<id>`` is ``DashboardSettings.faust_app_id``, also the consumer group)::

    manual-actions.action-lifecycle ──▶ agent count-lifecycle ── table actions
        (key: action id, 6 partitions)        │                    (changelog <id>-actions-changelog)
                                              ▼ delta + (source partition, source offset), key: tenant
                              <id>-pending-deltas ──▶ agent apply-deltas ── table pending
                                                                   (changelog <id>-pending-changelog)

Reliability, given faust's known pitfalls:

* Agents run with ``concurrency=1``: with more, faust can commit an offset past a message that
  is still being processed.
* Processing is at-least-once (faust's exactly-once mode is not used): faust flushes the
  producer (changelog writes, deltas) before it commits source offsets, so a crash can only
  make messages arrive again, and ``dashboard.domain.pending`` makes that harmless.
* faust acknowledges an event whenever iteration leaves it, through an exception or a
  cancellation too, so the agents acknowledge manually (``stream.noack()``) and only after the
  message was handled: a message that cannot be decoded or processed goes to
  ``manual-actions.dead-letters`` with the reason in its headers, then is acknowledged; a failure
  to write the table or produce (broker trouble) stops the app without acknowledging the message
  (so no commit can pass it), and the process exits to be restarted.
* Tables use the in-memory store; on start faust rebuilds them from their changelog topics
  (6 partitions, like their source topics) before any message is processed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import traceback
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, NoReturn, cast

import faust
from aiokafka.partitioner import murmur2
from faust.contrib.asgi import faust_app_running
from faust.tables.manager import TableManager
from faust.types import TP, EventT, Message

from dashboard.domain.pending import (
    ActionState,
    DeltaMessage,
    InvalidDelta,
    SourcePosition,
    TenantMismatch,
    TenantPending,
    apply_delta,
    count_lifecycle_event,
    fact_from_envelope,
)
from dashboard.metrics import DEAD_LETTERS, LIFECYCLE_EVENTS, NEGATIVE_COUNTS, PENDING_ACTIONS, PENDING_DELTAS
from dashboard.settings import DashboardSettings
from manual_actions import faults
from manual_actions.contracts import InvalidMessage, decode, topics
from manual_actions.contracts.dead_letters import dead_letter_headers
from manual_actions.kafka import TopicSpec, ensure_topics

logger = logging.getLogger("dashboard.streams")

CRASH_AFTER_STATE_STORED = "dashboard.after-state-stored"
"""Crash point (``manual_actions.faults``): stage 1 stored an action's new state (flushed to its
changelog) but has not sent the delta, and the lifecycle offset is not committed: after the
restart only the delta stored in the state can bring the count right."""

# Deltas are consumed within seconds; a week leaves room for a long outage of the dashboard.
DELTA_RETENTION_MS = 7 * 24 * 3600 * 1000

# How long a stop may take (final commit, leaving the consumer group) before we give up on it.
STOP_TIMEOUT_SECONDS = 15.0


class TenantNotLocal(Exception):
    """The tenant's counts live in a partition this process does not hold (now)."""


class _ProcessingFailed(BaseException):
    """Raised by ``_fail`` to leave an agent without acknowledging its message (a BaseException so
    that no ``except Exception`` on the way can swallow it)."""


def partition_for_tenant(tenant: str, partitions: int) -> int:
    """The delta-topic (and ``pending`` table) partition of a tenant.

    Kafka's default partitioner (murmur2 of the key), computed here so that a reader knows which
    partition holds a tenant without asking the producer.
    """
    return (murmur2(tenant.encode()) & 0x7FFFFFFF) % partitions


def _headers(message: Message) -> list[tuple[str, bytes]]:
    raw = message.headers
    if raw is None:
        return []
    items: Iterable[tuple[str, bytes]] = raw.items() if isinstance(raw, Mapping) else raw
    return [(str(name), bytes(value)) for name, value in items]


class DashboardStreams:
    """One faust app (agents, tables, topics) plus what the HTTP side needs from it.

    Build a new instance for every start: a faust app is bound to the event loop that runs it and
    is not restartable. ``run`` is the background loop (see ``manual_actions.service.serve``).
    """

    def __init__(self, settings: DashboardSettings) -> None:
        self.settings = settings
        self.partitions = settings.pending_partitions
        servers = [s.strip() for s in settings.kafka_bootstrap_servers.split(",") if s.strip()]
        self.app = faust.App(
            settings.faust_app_id,
            broker=[f"kafka://{server}" for server in servers],
            store="memory://",
            topic_partitions=self.partitions,
            topic_replication_factor=settings.kafka_replication_factor,
            # Only used by leader-elected agents, which this app has none of.
            topic_disable_leader=True,
            # The HTTP API is our FastAPI app (manual_actions.http), served by uvicorn in this loop.
            web_enabled=False,
            datadir=str(settings.datadir()),
            processing_guarantee="at_least_once",
            consumer_auto_offset_reset="earliest",
            broker_commit_interval=settings.faust_commit_interval_seconds,
            broker_session_timeout=settings.faust_session_timeout_seconds,
            stream_wait_empty=True,
            table_standby_replicas=0,
            autodiscover=False,
        )
        self.lifecycle_topic = self.app.topic(
            topics.ACTION_LIFECYCLE, key_serializer="raw", value_serializer="raw"
        )
        self.delta_topic = self.app.topic(
            f"{settings.faust_app_id}-pending-deltas",
            key_serializer="raw",
            value_serializer="raw",
            partitions=self.partitions,
            internal=True,  # faust creates it, with the partition count above
        )
        self.dead_letter_topic = self.app.topic(
            topics.DEAD_LETTERS, key_serializer="raw", value_serializer="raw"
        )
        # Keys and values are JSON (faust's default for tables without a model type).
        self.actions = self.app.Table(
            "actions",
            default=None,
            partitions=self.partitions,
            help="Per action: tenant, type, assignee, pending, last sequence/offset, recent deltas.",
        )
        self.pending = self.app.Table(
            "pending",
            default=None,
            partitions=self.partitions,
            help="Per tenant: pending counts and the last source offset applied per partition.",
        )
        self.app.agent(self.lifecycle_topic, name="count-lifecycle", concurrency=1)(self._count_lifecycle)
        self.app.agent(self.delta_topic, name="apply-deltas", concurrency=1)(self._apply_deltas)
        self._started = False
        self._stop_requested = asyncio.Event()
        self._failure: BaseException | None = None

    # --- running ---------------------------------------------------------------------------------

    def internal_topics(self) -> list[TopicSpec]:
        """The topics faust would create itself, with the partition count of their source."""
        return [
            TopicSpec(self.actions.changelog_topic.get_topic_name(), self.partitions, "compact"),
            TopicSpec(self.pending.changelog_topic.get_topic_name(), self.partitions, "compact"),
            TopicSpec(self.delta_topic.get_topic_name(), self.partitions, "delete", DELTA_RETENTION_MS),
        ]

    async def run(self) -> None:
        """Run the faust app in the running event loop until ``stop()`` (or until it crashes, which
        raises so that the process stops instead of serving frozen counts)."""
        # faust creates its internal topics concurrently with subscribing to them, and a topic
        # missing at the first assignment is left unassigned until a later rebalance (stage 2
        # would sit idle): create them first.
        await ensure_topics(
            self.settings.kafka_bootstrap_servers,
            replication_factor=self.settings.kafka_replication_factor,
            topics=self.internal_topics(),
        )
        async with faust_app_running(self.app, stop_timeout=STOP_TIMEOUT_SECONDS):
            # maybe_start() returned: the app started and the tables were recovered.
            self._started = True
            PENDING_ACTIONS.source = self.pending_snapshot
            try:
                stopped = asyncio.ensure_future(self._stop_requested.wait())
                app_down = asyncio.ensure_future(self.app.wait_until_stopped())
                try:
                    await asyncio.wait({stopped, app_down}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopped.cancel()
                    app_down.cancel()
            finally:
                if PENDING_ACTIONS.source == self.pending_snapshot:
                    PENDING_ACTIONS.source = None
                self._started = False
        if self._failure is not None:
            raise RuntimeError(f"stream processing failed: {self._failure}")
        if self.app.crashed and not self._stop_requested.is_set():
            raise RuntimeError(f"the faust app crashed: {self.app.crash_reason!r}") from self.app.crash_reason

    async def stop(self) -> None:
        """Ask ``run`` to stop the app (it commits what was processed and leaves the group)."""
        self._stop_requested.set()

    async def check_ready(self) -> None:
        """Readiness: the app runs and its tables are recovered; raises naming what is missing."""
        if self._failure is not None:
            raise RuntimeError(f"stream processing failed: {self._failure}")
        if self.app.crashed:
            raise RuntimeError(f"stream processor crashed: {self.app.crash_reason!r}")
        if not self._started:
            raise RuntimeError("stream processor not started (or still recovering its tables)")
        tables = cast(TableManager, self.app.tables)
        if self.app.in_recovery or not tables.recovery.completed.is_set():
            raise RuntimeError("tables are being recovered from their changelogs")

    # --- reading ---------------------------------------------------------------------------------

    def pending_for(self, tenant: str) -> TenantPending:
        """The tenant's current counts (zeros when it has none yet).

        Raises TenantNotLocal when this process does not hold the tenant's partition (not started,
        rebalancing, or another replica owns it).
        """
        if not self._started:
            raise TenantNotLocal("the stream processor is not running")
        partition = partition_for_tenant(tenant, self.partitions)
        if TP(self.delta_topic.get_topic_name(), partition) not in self.app.consumer.assignment():
            raise TenantNotLocal(
                f"partition {partition} of the pending table is not assigned to this process"
            )
        record = self.pending.get(tenant)
        return TenantPending.from_record(record) if record is not None else TenantPending(tenant=tenant)

    def pending_snapshot(self) -> list[tuple[str, Mapping[str, int]]]:
        """(tenant, {total, calls, sms}) for every tenant held here (for the metrics collector)."""
        return [(tenant, record) for tenant, record in list(self.pending.items()) if record is not None]

    # --- stage 1 ---------------------------------------------------------------------------------

    async def _count_lifecycle(self, stream: faust.StreamT[Any]) -> None:
        event: EventT[Any]
        # Manual acks: faust acknowledges an event whenever the iteration leaves it, even through
        # an exception or a cancellation. Only a handled (or dead-lettered) message is acked.
        async for event in cast(faust.Stream[Any], stream).noack().events():
            try:
                await self._on_lifecycle_message(event.message)
            except _ProcessingFailed:
                return  # unacknowledged; ``run`` stops the app (see ``_fail``)
            event.ack()

    async def _on_lifecycle_message(self, message: Message) -> None:
        position = SourcePosition(message.partition, message.offset)
        try:
            envelope = decode(message.value)
            fact = fact_from_envelope(envelope)
            if fact is None:
                LIFECYCLE_EVENTS.labels(outcome="ignored").inc()
                return
            record = self.actions.get(fact.action_id)
            current = ActionState.from_record(record) if record is not None else None
            result = count_lifecycle_event(current, fact, position)
        except InvalidMessage as exc:
            await self._dead_letter(message, exc.reason, stage="lifecycle")
            return
        except TenantMismatch as exc:
            await self._dead_letter(message, str(exc), stage="lifecycle")
            return
        except Exception as exc:
            # A bug or a corrupted table record: never skip the message silently.
            logger.exception(
                "Lifecycle message at %s/%s could not be counted", message.partition, message.offset
            )
            await self._dead_letter(
                message, f"unexpected error: {type(exc).__name__}: {exc}", stage="lifecycle"
            )
            return
        try:
            if result.state is not None:
                self.actions[fact.action_id] = result.state.to_record()
                if result.delta:
                    await self._crash_point(CRASH_AFTER_STATE_STORED)
            if result.delta:
                delta = DeltaMessage(fact.tenant, position, result.delta)
                await self.delta_topic.send(
                    key=fact.tenant.encode(),
                    value=delta.to_json_bytes(),
                    partition=partition_for_tenant(fact.tenant, self.partitions),
                )
        except Exception as exc:
            await self._fail(exc, "could not store the action state or send its delta")
        LIFECYCLE_EVENTS.labels(outcome=result.outcome.value).inc()

    # --- stage 2 ---------------------------------------------------------------------------------

    async def _apply_deltas(self, stream: faust.StreamT[Any]) -> None:
        event: EventT[Any]
        async for event in cast(faust.Stream[Any], stream).noack().events():
            try:
                await self._on_delta_message(event.message)
            except _ProcessingFailed:
                return
            event.ack()

    async def _on_delta_message(self, message: Message) -> None:
        try:
            delta = DeltaMessage.from_json_bytes(message.value)
            if message.key != delta.tenant.encode():
                raise InvalidDelta(f"key {message.key!r} is not the delta's tenant {delta.tenant!r}")
            record = self.pending.get(delta.tenant)
            current = TenantPending.from_record(record) if record is not None else None
            updated = apply_delta(current, delta)
        except (InvalidDelta, TenantMismatch) as exc:
            await self._dead_letter(message, str(exc), stage="deltas")
            return
        except Exception as exc:
            logger.exception("Delta at %s/%s could not be applied", message.partition, message.offset)
            await self._dead_letter(message, f"unexpected error: {type(exc).__name__}: {exc}", stage="deltas")
            return
        if updated is None:
            PENDING_DELTAS.labels(outcome="duplicate").inc()
            return
        try:
            self.pending[delta.tenant] = updated.to_record()
        except Exception as exc:
            await self._fail(exc, "could not store the tenant's counts")
        PENDING_DELTAS.labels(outcome="applied").inc()
        if updated.has_negative_count():
            NEGATIVE_COUNTS.inc()
            logger.error(
                "Pending count below zero for tenant %s after delta from %s/%s",
                delta.tenant, delta.source.partition, delta.source.offset,
                extra={"tenant": delta.tenant},
            )

    # --- failures --------------------------------------------------------------------------------

    async def _dead_letter(self, message: Message, reason: str, *, stage: str) -> None:
        """Send ``message`` unchanged to the dead-letter topic with ``reason`` in its headers."""
        logger.error(
            "Dead-lettering %s message at %s/%s: %s",
            message.topic, message.partition, message.offset, reason,
            extra={"reason": reason, "topic": message.topic},
        )
        try:
            await self.dead_letter_topic.send(
                key=message.key,
                value=message.value,
                headers=dead_letter_headers(
                    reason=reason,
                    original_topic=message.topic,
                    original_partition=message.partition,
                    original_offset=message.offset,
                    consumer_group=self.settings.faust_app_id,
                    original_headers=_headers(message),
                ),
            )
        except Exception as exc:
            await self._fail(exc, "could not dead-letter a message")
        DEAD_LETTERS.labels(stage=stage).inc()
        if stage == "lifecycle":
            LIFECYCLE_EVENTS.labels(outcome="dead_lettered").inc()
        else:
            PENDING_DELTAS.labels(outcome="dead_lettered").inc()

    async def _crash_point(self, name: str) -> None:
        if os.environ.get(faults.CRASH_AT_ENV) == name:
            # Make what was written so far durable, so that the kill lands exactly in the window
            # a real crash can hit: some effects stored, the offset not committed.
            await self.app.producer.flush()
            faults.crash_point(name)

    async def _fail(self, exc: BaseException, what: str) -> NoReturn:
        """Record an infrastructure failure and leave the agent, the message unacknowledged.

        The agent returns (rather than wait, which would make faust's graceful stop wait for the
        message forever); ``run`` then stops the app, which commits only acknowledged offsets (a
        commit cannot pass this message), and raises, so the process exits and the message is
        processed again after the restart.
        """
        # The traceback must not outlive this call (nor reach a log record that a handler may
        # keep): its frames reference the message, and faust's stop waits until every
        # unacknowledged message is garbage.
        details = "".join(traceback.format_exception(exc))
        description = f"{what}: {exc!r}"
        exc.__traceback__ = None
        logger.error("Stream processing failed: %s\n%s", description, details)
        if self._failure is None:
            self._failure = RuntimeError(description)
        self._stop_requested.set()
        raise _ProcessingFailed from None


@contextlib.asynccontextmanager
async def running(streams: DashboardStreams) -> AsyncIterator[DashboardStreams]:
    """Run ``streams`` in a task for the duration of the block (tests and tools), stopping it after."""
    task = asyncio.create_task(streams.run(), name="dashboard-streams")
    try:
        yield streams
    finally:
        await streams.stop()
        await asyncio.wait_for(task, timeout=STOP_TIMEOUT_SECONDS + 5)
