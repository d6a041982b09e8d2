"""Background loops: maintenance (``handlers.maintenance.run_once``), bulk requests
(``handlers.bulk.run_chunk``) and out of office (``handlers.directory.redistribute_due``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from action_queue import metrics
from action_queue.handlers import bulk, directory, maintenance
from action_queue.handlers.ports import BulkStatus, UnitOfWorkFactory

log = logging.getLogger(__name__)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class MaintenanceLoop:
    """Every ``interval`` seconds, apply due work until a batch comes back short.

    A failing batch (e.g. the database restarting) rolls back, is logged with its traceback and
    counted, and is retried after the interval: nothing was changed, so nothing is lost.
    """

    def __init__(self, uow: UnitOfWorkFactory, *, interval: float = 1.0, batch_size: int = 500,
                 clock: Callable[[], datetime] = _utcnow) -> None:
        self._uow = uow
        self._interval = interval
        self._batch_size = batch_size
        self._clock = clock

    async def run(self) -> None:
        while True:
            try:
                full = True
                while full:
                    changed = await maintenance.run_once(self._uow(), self._clock(), limit=self._batch_size)
                    full = changed >= self._batch_size
                    await asyncio.sleep(0)  # let HTTP requests in between full batches
            except Exception:
                log.exception("maintenance batch failed; retrying after the interval")
                metrics.MAINTENANCE_FAILURES.inc()
            await asyncio.sleep(self._interval)


class BulkLoop:
    """Works running bulk requests chunk by chunk (``handlers.bulk.run_chunk``), yielding to the
    event loop between chunks; sleeps ``interval`` seconds when none is waiting."""

    def __init__(self, uow: UnitOfWorkFactory, *, interval: float = 0.5, chunk: int = bulk.DEFAULT_CHUNK,
                 clock: Callable[[], datetime] = _utcnow) -> None:
        self._uow = uow
        self._interval = interval
        self._chunk = chunk
        self._clock = clock

    async def run(self) -> None:
        while True:
            try:
                worked = True
                while worked:
                    request = await bulk.run_chunk(self._uow(), self._clock(), chunk=self._chunk)
                    worked = request is not None
                    if request is not None and request.status is BulkStatus.DONE:
                        log.info("bulk request done", extra={
                            "tenant": request.tenant, "bulk_request_id": request.request_id,
                            "operation": request.operation.value, "matched": request.matched,
                            "changed": request.changed, "unchanged": request.unchanged})
                    await asyncio.sleep(0)  # let other tasks in between chunks
            except Exception:
                log.exception("bulk chunk failed; retrying after the interval")
                metrics.MAINTENANCE_FAILURES.inc()
            await asyncio.sleep(self._interval)


class OutOfOfficeLoop:
    """Every ``interval`` seconds, redistribute the queued actions of users who are out now
    (``handlers.directory.redistribute_due``); failures are logged, counted and retried."""

    def __init__(self, uow: UnitOfWorkFactory, *, interval: float = 10.0,
                 clock: Callable[[], datetime] = _utcnow) -> None:
        self._uow = uow
        self._interval = interval
        self._clock = clock

    async def run(self) -> None:
        while True:
            try:
                await directory.redistribute_due(self._uow, self._clock())
            except Exception:
                log.exception("out-of-office round failed; retrying after the interval")
                metrics.MAINTENANCE_FAILURES.inc()
            await asyncio.sleep(self._interval)
