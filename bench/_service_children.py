"""Starting a consumer child of action-queue (``consumer_only``) for a benchmark: the benchmark's
own file run again with a topic argument, in the service's environment, ready once it prints
``ready``. (Not collected as a benchmark: its name does not start with ``bench_``.)"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping

from action_queue.entrypoints.main import Settings


async def start_consumer_child(script: str, topic: str, settings: Settings, *, group_id: str | None = None,
                               extra_env: Mapping[str, str] | None = None,
                               ready_within: float = 120) -> asyncio.subprocess.Process:
    """``python <script> <topic>`` with ``settings``' Kafka, databases and consumer group (or
    ``group_id``) in its environment; returns once the child printed ``ready``."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, script, topic, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
             "DATABASE_URL": settings.database_url, "IDENTITY_DATABASE_URL": settings.identity_database_url,
             "CONSUMER_GROUP_ID": group_id or settings.consumer_group_id, **(extra_env or {})})
    assert child.stdout is not None
    line = await asyncio.wait_for(child.stdout.readline(), timeout=ready_within)
    assert line.strip() == b"ready", line
    return child
