"""Deterministic crash points for recovery tests.

A process started with ``MA_CRASH_AT=<point>`` kills itself with SIGKILL the first time it
reaches ``crash_point(<point>)``: no cleanup, no flush, exactly like a power cut at that instant.
Unset in production; the check is one dictionary lookup. The points of the shared plumbing are
below; services name their own next to the code they interrupt (workflow-runner:
``timer.after-claim``, ``timer.after-commit``, ``bulk.before-commit``, ``bulk.after-commit``).
"""

from __future__ import annotations

import os
import signal

CRASH_AT_ENV = "MA_CRASH_AT"

CONSUMER_AFTER_FETCH = "consumer.after-fetch"
"""Messages fetched from Kafka, nothing written to the database yet."""
CONSUMER_AFTER_HANDLER = "consumer.after-handler"
"""The handler's database transaction committed, the Kafka offsets not yet."""
RELAY_AFTER_SEND = "relay.after-send"
"""Outbox rows acknowledged by the broker, not yet marked published."""


def crash_point(name: str) -> None:
    """SIGKILL the current process if ``MA_CRASH_AT`` names this point."""
    if os.environ.get(CRASH_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
