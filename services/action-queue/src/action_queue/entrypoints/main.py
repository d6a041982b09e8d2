"""Process start of action-queue: migrate, ensure topics, then serve HTTP, the outbox relay and the
consumer in one event loop (``manual_actions.service.serve``), plus ``consumer_processes - 1``
child processes that run a consumer of the same group (docs/decisions/0021) and the worker loops.

One consumer process is bound by its own Python CPU (decoding, building COPY rows, aiokafka's
record unpacking), so materialisation scales with processes, not with tasks in one process. The
worker loops (bulk requests, 1,000 actions per transaction) run in the children when there are
any: their chunks keep an event loop busy for 100 ms at a time, which would hold up every API
request waiting on it. The children hold no HTTP port; the parent watches them:

* a child stops with the parent: it asks the kernel for SIGTERM when its parent dies
  (``PR_SET_PDEATHSIG``) and the parent's shutdown terminates and waits for it;
* the service stops with a child: when a child ends while the service runs, the parent ends the
  same way one process would have (a child killed by a signal takes the parent down with that
  signal, a child that exited with an error stops the service with exit status 1), and the
  orchestrator restarts the whole service. Every effect is committed before its offsets, so either
  end is safe.

Health and metrics stay on the parent: ``/ready`` answers for the service, and its ``/metrics``
shows the metrics of the whole service: the children write theirs in prometheus_client's
multiprocess mode into a directory of the parent (``ACTION_QUEUE_CONSUMER_METRICS_DIR``, else a
temporary directory the parent makes and removes), and the parent exports its consumer metrics and
its own (``action_queue.metrics.ALL``) merged with theirs
(``manual_actions.metrics.ChildProcessMetrics``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI
from pydantic import AliasChoices, Field

from action_queue import metrics
from action_queue.adapters import migrations
from action_queue.adapters.sql import SqlUnitOfWorkFactory
from action_queue.entrypoints.consumer import GROUP_ID, TOPICS, batch_handler
from action_queue.entrypoints.http import build_app
from action_queue.entrypoints.maintenance import BulkLoop, MaintenanceLoop, OutOfOfficeLoop
from manual_actions.db import create_engine
from manual_actions.kafka import BatchConsumer, BatchHandler, create_producer
from manual_actions.kafka_metrics import CONSUMER_METRICS
from manual_actions.logging import configure_logging
from manual_actions.metrics import ChildProcessMetrics
from manual_actions.runtime import open_identity_store, start_core
from manual_actions.service import BackgroundLoop, run_service, serve, supervise
from manual_actions.settings import ServiceSettings

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(migrations.__file__).parent

#: Partitions of manual-actions.action-lifecycle (the registry's count): more consumers of the
#: group than this would sit idle.
_MAX_USEFUL_PROCESSES = 6

#: argv[1] of a child process started by ``run``.
CONSUMER_ONLY = "consumer-only"
#: Environment variable a child reads its parent's pid from (to notice a parent that died before
#: the child asked for PR_SET_PDEATHSIG).
_PARENT_PID_ENV = "ACTION_QUEUE_PARENT_PID"


def default_consumer_processes() -> int:
    """One consumer process per core plus one (a process waits for PostgreSQL and the broker part
    of each batch), at most one per partition of action-lifecycle."""
    return max(1, min((os.cpu_count() or 1) + 1, _MAX_USEFUL_PROCESSES))


class Settings(ServiceSettings):
    service_name: str = "action-queue"
    http_port: int = 8102
    database_url: str = "postgresql+asyncpg://manual_actions@127.0.0.1:5432/action_queue"
    reservation_lease_seconds: int = Field(default=300, ge=1,
                                           description="How long Let's Start reserves an action to a person.")
    maintenance_interval_ms: int = Field(default=1000, ge=10,
                                         description="Pause of the maintenance loop between rounds.")
    maintenance_batch_size: int = Field(default=500, ge=1, description="Actions changed per transaction.")
    bulk_chunk_size: int = Field(default=1000, ge=1,
                                 description="Actions a bulk request changes per transaction.")
    out_of_office_interval_ms: int = Field(
        default=10_000, ge=10, description="Pause between rounds moving the actions of users who are out.")
    consumer_group_id: str = Field(default=GROUP_ID, min_length=1,
                                   description="Kafka consumer group; replicas of one deployment share it.")
    consumer_processes: int = Field(
        default_factory=default_consumer_processes, ge=1, le=64,
        validation_alias=AliasChoices("action_queue_consumer_processes", "consumer_processes"),
        description="Consumer processes of the group this service runs (env "
                    "ACTION_QUEUE_CONSUMER_PROCESSES): the parent's own consumer plus children that "
                    "run a consumer and the bulk-request loop (in the parent when there is no child). "
                    "Default: cores + 1, at most 6 (action-lifecycle's partitions).")
    consumer_metrics_dir: str = Field(
        default="",
        validation_alias=AliasChoices("action_queue_consumer_metrics_dir", "consumer_metrics_dir"),
        description="Directory the consumer-only children write their metrics to (env "
                    "ACTION_QUEUE_CONSUMER_METRICS_DIR; prometheus_client's multiprocess files, emptied "
                    "at start). Empty: a temporary directory made at start and removed at shutdown.")


@dataclass
class Service:
    """A wired, not yet running action-queue: the app, the loops to run, and what to close after.
    ``worker_loops`` run in the consumer children when the service has any (``run``), else beside
    ``background``."""

    app: FastAPI
    uow: SqlUnitOfWorkFactory
    background: list[BackgroundLoop] = field(default_factory=list)
    worker_loops: list[BackgroundLoop] = field(default_factory=list)
    on_shutdown: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


def worker_loops(settings: Settings, uow: SqlUnitOfWorkFactory) -> list[BackgroundLoop]:
    """The loops of long CPU-heavy work, kept off the API's event loop when the service has child
    processes: bulk requests, worked in chunks of ``bulk_chunk_size`` actions. Several processes
    may run them: a running request is worked by one chunk at a time (its row is locked, SKIP
    LOCKED, by the chunk's transaction)."""
    return [BulkLoop(uow, chunk=settings.bulk_chunk_size).run]


async def build_service(settings: Settings) -> Service:
    """Prepare the database and topics and wire every component (also used by the integration tests)."""
    core = await start_core(settings, MIGRATIONS_DIR)
    identity, identity_engine = await open_identity_store(settings)
    engine, producer = core.engine, core.producer
    uow = SqlUnitOfWorkFactory(engine)
    consumer = BatchConsumer(settings, group_id=settings.consumer_group_id, topics=TOPICS,
                             handler=batch_handler(uow), producer=producer)
    app = build_app(uow, identity, engine, lease=timedelta(seconds=settings.reservation_lease_seconds))
    maintenance = MaintenanceLoop(uow, interval=settings.maintenance_interval_ms / 1000,
                                  batch_size=settings.maintenance_batch_size)
    out_of_office = OutOfOfficeLoop(uow, interval=settings.out_of_office_interval_ms / 1000)
    return Service(
        app=app,
        uow=uow,
        background=[core.relay.run, consumer.run, maintenance.run, out_of_office.run,
                    identity.listen_for_revocations],
        worker_loops=worker_loops(settings, uow),
        # The consumer dead-letters through the producer, so it stops first.
        on_shutdown=[consumer.stop, identity.stop_listening, *core.shutdown_steps(), identity_engine.dispose],
    )


# --- consumer-only child processes --------------------------------------------------------------


class ConsumerChildren:
    """The ``count`` child processes running ``consumer_only_main``, started together (so the
    group's members join at about the same time) and watched for as long as the service runs."""

    # Below serve's 10 s per shutdown step, so a child that does not stop is killed, not left behind.
    def __init__(self, count: int, *, stop_timeout: float = 8.0, metrics_dir: Path | None = None) -> None:
        self._count = count
        self._stop_timeout = stop_timeout
        self._metrics_dir = metrics_dir
        self._children: list[asyncio.subprocess.Process] = []
        self._stopping = False

    async def start(self) -> None:
        env = {**os.environ, _PARENT_PID_ENV: str(os.getpid())}
        if self._metrics_dir is not None:
            # Read by prometheus_client when the child imports it: every metric value of the child
            # goes to an mmap file there, which the parent's ChildProcessMetrics reads.
            env["PROMETHEUS_MULTIPROC_DIR"] = str(self._metrics_dir)
        for _ in range(self._count):
            self._children.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "action_queue.entrypoints.main", CONSUMER_ONLY, env=env))
        log.info("consumer processes started", extra={"pids": [c.pid for c in self._children]})

    async def watch(self) -> None:
        """Background loop: returns never while the children run; when one ends unexpectedly, the
        service ends as one process would have (see the module's docstring)."""
        if not self._children:
            await asyncio.Event().wait()
        waits = {asyncio.ensure_future(c.wait()): c for c in self._children}
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if self._stopping:
            await asyncio.Event().wait()  # cancelled by the shutdown
        child = waits[next(iter(done))]
        status = child.returncode
        assert status is not None
        log.error("a consumer process ended; stopping the service",
                  extra={"pid": child.pid, "returncode": status})
        if status == -signal.SIGKILL:
            # As if the one process had been killed: no cleanup anywhere (crash tests rely on it).
            for other in self._children:
                if other.returncode is None:
                    other.kill()
            os.kill(os.getpid(), signal.SIGKILL)
        if status <= 0:
            # Stopped by a signal (often one sent to the whole process group): stop gracefully too.
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.Event().wait()  # cancelled by the shutdown
        raise RuntimeError(f"consumer process {child.pid} exited with status {status}")

    async def stop(self) -> None:
        """SIGTERM every child (each finishes and commits its batch), then wait; SIGKILL after
        ``stop_timeout`` seconds."""
        self._stopping = True
        for child in self._children:
            if child.returncode is None:
                child.terminate()
        for child in self._children:
            try:
                await asyncio.wait_for(child.wait(), self._stop_timeout)
            except TimeoutError:
                child.kill()
                await child.wait()


def _die_with_parent() -> None:
    """Ask Linux for SIGTERM when the parent dies; exit if it already has."""
    with contextlib.suppress(OSError, AttributeError):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    expected = os.environ.get(_PARENT_PID_ENV)
    if expected is not None and os.getppid() != int(expected):
        raise SystemExit("the parent process ended before this consumer process started")


async def consumer_only(settings: Settings, *, wrap: Callable[[BatchHandler], BatchHandler] | None = None,
                        topics: Sequence[str] = TOPICS, with_worker_loops: bool = True) -> None:
    """Run one consumer of the group and the ``worker_loops`` until SIGTERM/SIGINT: no HTTP, no
    relay, no other loop.

    The database is already migrated and the topics exist (the parent did it). The process gets
    its own small engine and its own producer for dead letters. ``wrap``, ``topics`` and
    ``with_worker_loops`` are for the benchmark (timing the handler, its own topic, nothing else)."""
    engine = create_engine(settings.database_url, pool_size=2)
    producer = create_producer(settings)
    await producer.start()
    uow = SqlUnitOfWorkFactory(engine)
    handler = batch_handler(uow)
    consumer = BatchConsumer(settings, group_id=settings.consumer_group_id, topics=topics,
                             handler=wrap(handler) if wrap else handler, producer=producer)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(consumer.stop()))
    # A worker loop that fails ends the process with its error, as a background loop ends the
    # parent (``serve``); once the consumer stopped they are cancelled (a chunk cut short rolls
    # back and is worked again later).
    failures: list[Exception] = []
    stopping: list[asyncio.Future[None]] = []

    def worker_failed(name: str, exc: Exception | None) -> None:
        failures.append(exc if exc is not None else RuntimeError(f"worker loop {name} returned"))
        stopping.append(asyncio.ensure_future(consumer.stop()))

    workers = [asyncio.ensure_future(supervise(run_loop, stopping=lambda: bool(stopping),
                                               on_failure=worker_failed))
               for run_loop in worker_loops(settings, uow) if with_worker_loops]
    try:
        await consumer.run()
    finally:
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await producer.stop()
        await engine.dispose()
    if failures:
        raise failures[0]


# --- process start ------------------------------------------------------------------------------


_TEMPORARY_METRICS_PREFIX = "action-queue-metrics-"


class ChildMetricsDirectory:
    """Where the children write their metrics: the operator's directory (its old ``*.db`` files
    removed, as prometheus_client's multiprocess mode requires between runs), else a temporary
    directory this process makes and ``close`` removes. A process killed before ``close`` leaves
    its temporary directory behind: the next one removes those whose process is gone."""

    def __init__(self, configured: str) -> None:
        if configured:
            self.path = Path(configured)
            self.path.mkdir(parents=True, exist_ok=True)
            own = f"_{os.getpid()}.db"
            for stale in self.path.glob("*.db"):
                if not stale.name.endswith(own):
                    stale.unlink(missing_ok=True)
            self._made = False
        else:
            _remove_orphaned_temporary_directories()
            self.path = Path(tempfile.mkdtemp(prefix=f"{_TEMPORARY_METRICS_PREFIX}{os.getpid()}-"))
            self._made = True

    async def close(self) -> None:
        if self._made:
            shutil.rmtree(self.path, ignore_errors=True)


def _remove_orphaned_temporary_directories() -> None:
    """Remove the temporary metrics directories of service processes that no longer run (named
    ``action-queue-metrics-<pid>-...``; a pid taken again by another process keeps its directory)."""
    for path in Path(tempfile.gettempdir()).glob(f"{_TEMPORARY_METRICS_PREFIX}*-*"):
        pid = path.name.removeprefix(_TEMPORARY_METRICS_PREFIX).split("-", 1)[0]
        if not pid.isdigit() or not path.is_dir():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's


async def run(settings: Settings) -> None:
    service = await build_service(settings)
    on_shutdown = service.on_shutdown
    metrics_dir: ChildMetricsDirectory | None = None
    if settings.consumer_processes > 1:
        metrics_dir = ChildMetricsDirectory(settings.consumer_metrics_dir)
        ChildProcessMetrics(metrics_dir.path, (*CONSUMER_METRICS, *metrics.ALL)).install()
        on_shutdown = [*on_shutdown, metrics_dir.close]
    children = ConsumerChildren(settings.consumer_processes - 1,
                                metrics_dir=metrics_dir.path if metrics_dir else None)
    await children.start()
    # The worker loops go with the children if there are any, away from the API's event loop.
    here = service.worker_loops if settings.consumer_processes == 1 else []
    await serve(service.app, settings, background=[*service.background, *here, children.watch],
                # Children first: they are consumers of the group too, stopped before the parent's.
                on_shutdown=[children.stop, *on_shutdown])


def main() -> None:
    settings = Settings()
    if sys.argv[1:2] == [CONSUMER_ONLY]:
        _die_with_parent()
        configure_logging(f"{settings.service_name}-consumer", settings.log_level)
        run_service(consumer_only(settings))
        return
    configure_logging(settings.service_name, settings.log_level)
    run_service(run(settings))


if __name__ == "__main__":
    main()
