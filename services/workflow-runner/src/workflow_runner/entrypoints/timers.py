"""The timer loop of the service process (``handlers.timers.fire_due``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from workflow_runner import metrics
from workflow_runner.handlers import timers
from workflow_runner.handlers.ports import UnitOfWorkFactory

log = logging.getLogger(__name__)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class TimerLoop:
    """Every ``interval`` seconds, fire due timers batch after batch until a batch comes back short.

    A failing batch (database restarting, a deadlock) rolls back, is logged and counted, and is
    retried after the interval: its timers stay unfired, so nothing is lost.
    """

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        *,
        interval: float = 0.5,
        batch_size: int = timers.DEFAULT_BATCH,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._uow = uow
        self._interval = interval
        self._batch_size = batch_size
        self._clock = clock
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        """Until ``stop()``; a batch in flight finishes first."""
        while not self._stopping.is_set():
            try:
                full = True
                while full and not self._stopping.is_set():
                    claimed = await timers.fire_due(self._uow(), self._clock(), limit=self._batch_size)
                    full = claimed >= self._batch_size
                    await asyncio.sleep(0)  # let HTTP requests and the consumer in between batches
            except Exception:
                log.exception("timer batch failed; retrying after the interval")
                metrics.TIMER_FAILURES.inc()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._stopping.wait()

    async def stop(self) -> None:
        self._stopping.set()
