"""Benchmark: materialisation throughput of action-queue, against a raw aiokafka consumer.

    ./dev bench -k materialise

Produces ``COUNT`` ActionQueued v2 envelopes (100 tenants, 10,000 assignees) to a fresh topic with
a fast raw producer, then reads all of them twice in the same run:

1. baseline: a raw ``AIOKafkaConsumer`` (no group, partitions assigned by hand) that decodes
   nothing and only counts records;
2. action-queue's real materialisation: the ``BatchConsumer`` with action-queue's batch handler
   (decode, COPY into ``manual_actions``, commit, then offset commits), on a fresh
   database and consumer group, with the service's own settings.

Timing of (2) starts when the first batch reaches the handler (the group join before it is not
materialisation work) and ends when the group's committed offsets cover every record; the
database is then checked to hold exactly ``COUNT`` actions. Prints both rates and their ratio.
``BENCH_MATERIALISE_COUNT`` changes the number of events; ``BENCH_MATERIALISE_PROCESSES=N`` runs
N consumers of the group (default: the service's own default of ``ACTION_QUEUE_CONSUMER_PROCESSES``,
cores + 1, at most 6), this process's and N-1 consumer-only processes of the service
(``consumer_only``, as the service starts them), started before the timing, so the group's first
rebalance is part of it; with one process it also prints the consumer process's CPU per action.
``BENCH_PROFILE=<file>`` writes a cProfile of the materialisation phase of this process (consumer
loop, decoding, handler).

``./dev bench -k insert_ceiling`` measures what PostgreSQL alone allows on this machine: the same
envelopes decoded and turned into COPY rows before the clock starts, then only the COPYs into a
fresh action-queue database, one transaction per 500 rows, from ``PROCESSES`` connections at once
(``BENCH_MATERIALISE_PROCESSES``), with the CPU of their PostgreSQL backends per row. No Kafka and
no decoding: an upper bound for materialisation with this schema, not a rate it can reach.

``python bench/bench_action_queue_materialise.py --decode`` (no stack needed) is the micro benchmark
of decoding alone: µs per message of ``kafka.decode_record`` (what the consumer calls), of the
reference ``contracts.decode``, and of the fast path before decision 0024
(``Envelope[ActionQueued].model_validate_json`` plus the wire-field check), on this bench's envelopes,
with the collector off and as in a service (``tune_garbage_collector``, 500 envelopes alive per batch).
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import gc
import os
import random
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from _bench_support import process_cpu_seconds, start_consumer_child
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from sqlalchemy import func, select

from action_queue.adapters.materialise_sql import QUEUED_COLUMNS, queued_record
from action_queue.adapters.tables import manual_actions
from action_queue.entrypoints.consumer import batch_handler
from action_queue.entrypoints.main import (
    ChildMetricsDirectory,
    Settings,
    build_service,
    consumer_only,
    default_consumer_processes,
)
from action_queue.handlers.ports import NewAction
from manual_actions.contracts import ActionQueued, ActionType, ContactSnapshot, Envelope, decode
from manual_actions.db import driver_connection
from manual_actions.kafka import BatchConsumer, BatchHandler, Delivered, TopicSpec, ensure_topics
from manual_actions.service import run_service, tune_garbage_collector

COUNT = int(os.environ.get("BENCH_MATERIALISE_COUNT", "200000"))
# The service's default (ACTION_QUEUE_CONSUMER_PROCESSES unset) unless told otherwise.
PROCESSES = int(os.environ.get("BENCH_MATERIALISE_PROCESSES", default_consumer_processes()))
PARTITIONS = 6  # as manual-actions.action-lifecycle
TENANTS = [f"bench-t{i:03d}" for i in range(100)]
ASSIGNEES = [uuid.uuid4() for _ in range(10_000)]

# Placeholders replaced per event, so 200,000 distinct, valid envelopes cost microseconds each
# instead of a pydantic serialisation each.
_AID, _ENR, _CID, _USR = (uuid.UUID(int=n) for n in range(1, 5))
_TENANT = "bench-tenant-placeholder"


def _templates() -> list[str]:
    """JSON of real ActionQueued v2 envelopes (SMS and call, a few priorities) with placeholders."""
    out = []
    queued = datetime.now(UTC) - timedelta(hours=1)
    template = "Hi {{contact.first_name}}, thanks!"
    kinds = ((ActionType.SMS, 0), (ActionType.SMS, 5), (ActionType.CALL, 0), (ActionType.CALL, 9))
    for kind, priority in kinds:
        sms = kind is ActionType.SMS
        payload = ActionQueued(
            action_id=_AID, action_type=kind, action_name="Follow up", workflow_id=uuid.uuid4(),
            workflow_version=3, workflow_name="Inbound leads", step_id="step1", enrollment_id=_ENR,
            contact=ContactSnapshot(contact_id=_CID, name="Bench Contact", phone="+14155550100"),
            assignee_user_id=_USR, message="Hi Bench, thanks!" if sms else None,
            message_template=template if sms else None,
            priority=priority, queued_at=queued, due_at=queued + timedelta(minutes=30))
        envelope = Envelope.wrap(payload, source="workflow-runner", tenant=_TENANT, subject=str(_AID),
                                 sequence=1)
        text = envelope.model_dump_json().replace("%", "%%")
        for placeholder, name in ((_AID, "aid"), (_ENR, "enr"), (_CID, "cid"), (_USR, "usr")):
            text = text.replace(str(placeholder), f"%({name})s")
        text = text.replace(str(envelope.id), "%(eid)s").replace(_TENANT, "%(tenant)s")
        out.append(text)
    return out


def _events(count: int) -> list[tuple[bytes, bytes, str]]:
    """(value, key, tenant) of ``count`` distinct ActionQueued envelopes."""
    rnd = random.Random(7)
    templates = _templates()
    events = []
    for _ in range(count):
        action_id = uuid.uuid4()
        tenant = rnd.choice(TENANTS)
        value = rnd.choice(templates) % {"eid": uuid.uuid4(), "aid": action_id, "enr": uuid.uuid4(),
                                         "cid": uuid.uuid4(), "usr": rnd.choice(ASSIGNEES), "tenant": tenant}
        events.append((value.encode(), str(action_id).encode(), tenant))
    return events


async def _produce(bootstrap: str, topic: str, events: Sequence[tuple[bytes, bytes, str]]) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20,
                                max_batch_size=512 * 1024, max_request_size=8 * 1024 * 1024)
    await producer.start()
    started = time.perf_counter()
    try:
        pending = []
        for value, key, tenant in events:
            headers = [("type", b"ActionQueued"), ("version", b"2"), ("tenant", tenant.encode())]
            pending.append(await producer.send(topic, value, key=key, headers=headers))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def _raw_consume(bootstrap: str, topic: str, count: int) -> float:
    """Seconds a raw consumer needs to fetch ``count`` records (no decoding, no group)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                                auto_offset_reset="earliest", fetch_max_bytes=50 * 1024 * 1024,
                                max_partition_fetch_bytes=8 * 1024 * 1024)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
        seen = 0
        started = time.perf_counter()
        while seen < count:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            seen += sum(len(records) for records in batch.values())
        return time.perf_counter() - started
    finally:
        await consumer.stop()


async def _committed(admin: AIOKafkaAdminClient, group: str) -> int:
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    except KafkaError as exc:  # the offsets topic or the coordinator is still starting
        if not exc.retriable:
            raise
        return 0
    return sum(meta.offset for meta in offsets.values() if meta.offset > 0)


async def test_materialisation_throughput(stack: Any) -> None:
    topic = f"bench-aq-materialise-{uuid.uuid4().hex[:8]}"
    await ensure_topics(stack.kafka_bootstrap, topics=[TopicSpec(topic, partitions=PARTITIONS)])
    started = time.perf_counter()
    events = _events(COUNT)
    generated = time.perf_counter() - started
    produced = await _produce(stack.kafka_bootstrap, topic, events)
    print(f"\n{COUNT} ActionQueued envelopes ({len(events[0][0])} bytes each) generated in {generated:.1f}s, "
          f"produced in {produced:.1f}s ({COUNT / produced:,.0f}/s)")

    raw_seconds = await _raw_consume(stack.kafka_bootstrap, topic, COUNT)
    raw_rate = COUNT / raw_seconds

    group = f"aq-bench-{uuid.uuid4().hex[:8]}"
    settings = Settings(kafka_bootstrap_servers=stack.kafka_bootstrap,
                        database_url=stack.database_url(f"aq_bench_mat_{uuid.uuid4().hex[:8]}"),
                        identity_database_url=stack.database_url("identity"), consumer_group_id=group)
    service = await build_service(settings)
    # The replicas write their metrics in multiprocess mode, as the service's children do.
    metrics_dir = ChildMetricsDirectory("")
    replicas = [await _start_replica(settings, topic, str(metrics_dir.path)) for _ in range(PROCESSES - 1)]
    first_batch: list[float] = []
    first_cpu: list[float] = []
    handle = batch_handler(service.uow)

    async def timed(batch: Sequence[Delivered]) -> None:
        if not first_batch:
            first_batch.append(time.time())
            first_cpu.append(time.process_time())
        await handle(batch)

    # The service's own consumer settings and handler, on the bench topic.
    dead_letters = await _dead_letter_producer(stack.kafka_bootstrap)
    consumer = BatchConsumer(settings, group_id=group, topics=[topic], handler=timed, producer=dead_letters)
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    # As the service's processes do once started (this one is pytest's, with a larger heap).
    tune_garbage_collector()
    if os.environ.get("BENCH_GC_THRESHOLD"):
        # To measure another first threshold than run_service's (this process only).
        gc.set_threshold(int(os.environ["BENCH_GC_THRESHOLD"]), *gc.get_threshold()[1:])
    gc_time = _GcTime()
    gc.callbacks.append(gc_time)
    profile_path = os.environ.get("BENCH_PROFILE")
    profiler = cProfile.Profile() if profile_path else None
    if profiler:
        profiler.enable()
    task = asyncio.create_task(consumer.run())
    try:
        deadline = time.monotonic() + 900
        while await _committed(admin, group) < COUNT:
            assert not task.done(), task
            assert time.monotonic() < deadline, "materialisation did not finish in 15 minutes"
            await asyncio.sleep(0.05)
        finished = time.time()
        cpu = time.process_time() - first_cpu[0] if first_cpu else 0.0
        if profiler:
            profiler.disable()
            profiler.dump_stats(profile_path)
        async with service.uow.engine.connect() as conn:
            stored = (await conn.execute(select(func.count()).select_from(manual_actions))).scalar_one()
        assert stored == COUNT, stored
    finally:
        await consumer.stop()
        await asyncio.gather(task, return_exceptions=True)
        await admin.close()
        await dead_letters.stop()
        for replica in replicas:
            replica.send_signal(signal.SIGTERM)
            await replica.wait()
        await metrics_dir.close()
        gc.callbacks.remove(gc_time)
        for callback in service.on_shutdown:
            await callback()
    # The first batch of any consumer of the group starts the clock (with several processes this
    # one may be assigned no partition at all).
    firsts = first_batch + [await _first_batch_of(replica) for replica in replicas]
    seconds = finished - min(firsts)
    rate = COUNT / seconds
    print(f"raw aiokafka consumer (no decoding): {raw_seconds:.2f}s, {raw_rate:,.0f} records/s")
    print(f"action-queue materialisation (batch {settings.consumer_batch_max_records}, {PROCESSES} consumer "
          f"process(es)): {seconds:.2f}s, "
          f"{rate:,.0f} actions/s; ratio to raw {rate / raw_rate:.2f}")
    if PROCESSES == 1:
        # Robust against other load on the machine, unlike the rate: this process's CPU only
        # (consumer loop, decoding, handler; not PostgreSQL's or the broker's).
        print(f"consumer process CPU: {cpu * 1e6 / COUNT:.1f} µs per action")
        print(f"of which cyclic GC (whole run of this process): {gc_time.seconds * 1e6 / COUNT:.1f} µs per "
              f"action, collections by generation {gc_time.collections}")
    # Epoch seconds of the timed window, to match samples of other processes' CPU against it.
    print(f"timed window (epoch s): {min(firsts):.2f} {finished:.2f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


async def test_insert_ceiling(stack: Any) -> None:
    """PostgreSQL's own ceiling for materialisation's inserts (see the module docstring)."""
    settings = Settings(kafka_bootstrap_servers=stack.kafka_bootstrap,
                        database_url=stack.database_url(f"aq_bench_ceil_{uuid.uuid4().hex[:8]}"),
                        identity_database_url=stack.database_url("identity"))
    service = await build_service(settings)  # migrates the fresh database
    records = [queued_record(NewAction(tenant, envelope.data, envelope.sequence))
               for value, _, tenant in _events(COUNT) for envelope in [decode(value)]]
    batches = [records[start:start + 500] for start in range(0, len(records), 500)]
    engine = service.uow.engine
    try:
        async with contextlib.AsyncExitStack() as stack_of_connections:
            connections = [await stack_of_connections.enter_async_context(engine.connect())
                           for _ in range(PROCESSES)]
            drivers = [await driver_connection(conn) for conn in connections]
            backends = [await driver.fetchval("SELECT pg_backend_pid()") for driver in drivers]
            queue: asyncio.Queue[list[tuple[Any, ...]]] = asyncio.Queue()
            for batch in batches:
                queue.put_nowait(batch)

            async def worker(driver: Any) -> None:
                while not queue.empty():
                    batch = queue.get_nowait()
                    async with driver.transaction():
                        await driver.copy_records_to_table("manual_actions", records=batch,
                                                           columns=QUEUED_COLUMNS)

            cpu_before = sum(process_cpu_seconds(pid) for pid in backends)
            started, client_started = time.perf_counter(), time.process_time()
            await asyncio.gather(*(worker(driver) for driver in drivers))
            seconds, client_cpu = time.perf_counter() - started, time.process_time() - client_started
            backend_cpu = sum(process_cpu_seconds(pid) for pid in backends) - cpu_before
        async with engine.connect() as conn:
            stored = (await conn.execute(select(func.count()).select_from(manual_actions))).scalar_one()
        assert stored == COUNT, stored
    finally:
        for callback in service.on_shutdown:
            await callback()
    print(f"\nCOPY only ({COUNT} rows built beforehand, {PROCESSES} connections, 500 per transaction): "
          f"{seconds:.2f}s, {COUNT / seconds:,.0f} rows/s; PostgreSQL backends' CPU "
          f"{backend_cpu * 1e6 / COUNT:.1f} µs per row, this process's (asyncpg encoding the rows) "
          f"{client_cpu * 1e6 / COUNT:.1f} µs per row; load average after: {os.getloadavg()[0]:.2f}")


class _GcTime:
    """A ``gc.callbacks`` entry adding up the time spent in collections, by generation."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.collections[info["generation"]] += 1


async def _dead_letter_producer(bootstrap: str) -> AIOKafkaProducer:
    # Nothing is expected to be dead-lettered here; the consumer needs a started producer anyway.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    return producer


async def _start_replica(settings: Settings, topic: str, metrics_dir: str) -> asyncio.subprocess.Process:
    """A child process consuming ``topic`` in the same group with the same settings; returns once
    its service is built (it prints ``ready``)."""
    return await start_consumer_child(__file__, topic, settings,
                                      extra_env={"PROMETHEUS_MULTIPROC_DIR": metrics_dir})


async def _first_batch_of(replica: asyncio.subprocess.Process) -> float:
    """When the replica's first batch reached its handler (infinity if it got none)."""
    assert replica.stdout is not None
    try:
        line = await asyncio.wait_for(replica.stdout.readline(), timeout=0.5)
    except TimeoutError:
        return float("inf")
    return float(line.split()[1]) if line.startswith(b"first ") else float("inf")


async def _replica(topic: str) -> None:
    """A consumer-only process of the service (``consumer_only``, as ``run`` starts them), on the
    bench topic, printing when its first batch reached the handler."""
    first = True

    def wrap(handle: BatchHandler) -> BatchHandler:
        async def timed(batch: Sequence[Delivered]) -> None:
            nonlocal first
            if first:
                first = False
                print(f"first {time.time()}", flush=True)
            await handle(batch)
        return timed

    print("ready", flush=True)
    await consumer_only(Settings(), wrap=wrap, topics=[topic], with_worker_loops=False)


def _decode_micro(rounds: int = 7, batches: int = 8, batch_size: int = 500) -> None:
    """Print µs per message of each decoding path (best of ``rounds``, paths interleaved)."""
    from manual_actions.contracts import decode
    from manual_actions.kafka import decode_record

    queued_class: Any = Envelope[ActionQueued]
    wire_required = frozenset(("id", "time"))

    def before(value: bytes, headers: Any) -> Any:
        # The fast path as it was before decision 0024: pydantic's model plus the wire-field check.
        envelope = queued_class.model_validate_json(value)
        assert envelope.model_fields_set >= wire_required
        return envelope

    paths: dict[str, Any] = {
        "kafka.decode_record (now)": decode_record,
        "model_validate_json (before 0024)": before,
        "contracts.decode (reference)": lambda value, headers: decode(value),
    }
    records = [(value, [("type", b"ActionQueued"), ("version", b"2"), ("tenant", tenant.encode())])
               for value, _, tenant in _events(batches * batch_size)]
    for value, headers in records[:50]:
        assert decode_record(value, headers) == decode(value)

    def one_round(path: Any) -> float:
        started = time.perf_counter()
        for start in range(0, len(records), batch_size):
            # A batch's envelopes stay alive together, as in the consumer.
            batch = [path(value, headers) for value, headers in records[start:start + batch_size]]
            del batch
        return (time.perf_counter() - started) / len(records)

    for mode in ("collector off", "collector as in a service"):
        if mode == "collector off":
            gc.disable()
        else:
            gc.enable()
            tune_garbage_collector()
        best = dict.fromkeys(paths, float("inf"))
        for _ in range(rounds):
            for name, path in paths.items():
                best[name] = min(best[name], one_round(path))
        for name, seconds in best.items():
            print(f"{mode:26} {name:36} {seconds * 1e6:6.2f} µs per message")
    gc.enable()
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--decode"]:
        _decode_micro()
    else:
        run_service(_replica(sys.argv[1]))  # as the service runs its children: uvloop, GC tuned
