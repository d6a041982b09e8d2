"""Waiting on an ``asyncio.Event`` with a time limit, without losing a cancellation."""

from __future__ import annotations

import asyncio
import contextlib


async def wait_event(event: asyncio.Event, seconds: float) -> None:
    """Wait until ``event`` is set or ``seconds`` passed, whichever comes first.

    Not ``asyncio.wait_for(event.wait(), ...)``: on Python 3.11, when the event is set in the same
    loop iteration as the waiting task is cancelled (a NOTIFY or a wake-up arriving while the
    service stops), ``wait_for`` returns normally and the cancellation is lost, so a loop goes on
    as if nothing happened. ``asyncio.timeout`` only ever swallows the cancellation it caused
    itself. Every background loop waits through this function.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
