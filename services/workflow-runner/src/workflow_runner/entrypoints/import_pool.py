"""Validation of large contact imports in worker processes.

Validating a phone number with ``phonenumbers`` costs about 0.1 ms of pure-Python CPU, so 100,000
rows would hold the event loop (and every other request) for seconds. Large imports are split
into one slice per worker and validated in a process pool; small ones are validated inline.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from typing import Any

from workflow_runner.domain.imports import ParsedImport, merge, validate_rows


class PooledValidator:
    """A ``handlers.directory.Validator`` backed by a lazily started process pool ("spawn", so no
    state of the running service is copied into the workers)."""

    def __init__(self, *, workers: int = 2, min_rows: int = 5_000) -> None:
        self._workers = workers
        self._min_rows = min_rows
        self._pool: ProcessPoolExecutor | None = None

    async def __call__(
        self, tenant: str, rows: Sequence[Any], fields: set[str], now: datetime
    ) -> ParsedImport:
        if len(rows) < self._min_rows:
            return validate_rows(tenant, rows, fields, now=now)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self._workers, mp_context=multiprocessing.get_context("spawn"))
        loop = asyncio.get_running_loop()
        size = -(-len(rows) // self._workers)
        parts = await asyncio.gather(
            *(
                loop.run_in_executor(
                    self._pool,
                    functools.partial(
                        validate_rows,
                        tenant,
                        list(rows[start : start + size]),
                        fields,
                        now=now,
                        first_row=start + 1,
                    ),
                )
                for start in range(0, len(rows), size)
            )
        )
        return merge(parts)

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
