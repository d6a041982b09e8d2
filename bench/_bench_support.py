"""What several benchmarks need (not collected as a benchmark: its name does not start with
``bench_``): a process's CPU time, and a consumer child of action-queue (``consumer_only``)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from action_queue.entrypoints.main import Settings


def process_cpu_seconds(pid: int, *, with_reaped_children: bool = False) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far, from ``/proc`` (Linux); with
    ``with_reaped_children`` also those of its children that ended and were waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    used = fields[11:15] if with_reaped_children else fields[11:13]  # utime, stime, cutime, cstime
    return sum(int(x) for x in used) / os.sysconf("SC_CLK_TCK")


async def start_consumer_child(script: str, topic: str, settings: Settings, *, group_id: str | None = None,
                               extra_env: Mapping[str, str] | None = None,
                               ready_within: float = 120) -> asyncio.subprocess.Process:
    """A consumer child for a benchmark: ``python <script> <topic>`` (the benchmark's own file run
    again) with ``settings``' Kafka, databases and consumer group (or ``group_id``) in its
    environment; returns once the child printed ``ready``."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, script, topic, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
             "DATABASE_URL": settings.database_url, "IDENTITY_DATABASE_URL": settings.identity_database_url,
             "CONSUMER_GROUP_ID": group_id or settings.consumer_group_id, **(extra_env or {})})
    assert child.stdout is not None
    line = await asyncio.wait_for(child.stdout.readline(), timeout=ready_within)
    assert line.strip() == b"ready", line
    return child
