"""``wait_event``: a cancellation is never lost, even when the event is set in the same moment
(on Python 3.11 ``asyncio.wait_for`` lost it, and the outbox relay went on after it was cancelled)."""

from __future__ import annotations

import asyncio

import pytest

from manual_actions.waiting import wait_event


async def test_wait_event_is_cancelled_even_when_the_event_is_set_in_the_same_moment() -> None:
    event = asyncio.Event()
    waiter = asyncio.create_task(wait_event(event, 60))
    await asyncio.sleep(0)  # the waiter is now waiting
    event.set()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter


async def test_wait_event_returns_on_the_event_or_after_the_time() -> None:
    event = asyncio.Event()
    async with asyncio.timeout(5):
        await wait_event(event, 0.01)  # times out quietly
        asyncio.get_running_loop().call_later(0.01, event.set)
        await wait_event(event, 60)  # returns as soon as it is set
