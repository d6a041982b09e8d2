"""Helpers for tests that run against the real stack (beside the ``stack`` fixture)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


async def eventually(probe: Callable[[], Any], *, what: str, within: float = 30.0) -> Any:
    """Await until ``probe()`` (sync or async) is truthy; fail naming ``what`` and the last value.

    Polling, because what the tests wait on (a consumer's effect, a relay's publication) sends no
    notification a test could await.
    """
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")
