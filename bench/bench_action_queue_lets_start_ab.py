"""Benchmark: Let's Start of the working tree against a baseline revision, interleaved.

    BENCH_BASELINE=<git revision> ./dev bench -k lets_start_ab       (default: HEAD)

On this shared host the million benchmark's Let's Start moves by about ±0.3 ms of CPU from one run
to the next: more than most changes save. This benchmark starts two servers at once, on one
database of ``BENCH_MILLION_COUNT`` actions (1,000,000 by default, loaded as the million benchmark
loads them). One server runs the baseline's code: a ``git worktree`` of ``BENCH_BASELINE`` under
``.cache/bench-baseline``, put first on its ``PYTHONPATH``. The other runs the working tree. One
client sends Let's Start to each in turn, ``CALLS`` times each after a warm-up, so both servers see
the same moments of the host. Both reserve from the same queues.

Prints, for each server, the whole request at the server (p50 / p95 / p99, measured inside it as
the million benchmark does), Let's Start's read, the server's CPU per request, and the ratios of
the working tree to the baseline.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
from bench_action_queue_million import (
    ASSIGNEES_PER_TENANT,
    BENCH_PATH,
    TENANTS,
    _free_port,
    _load,
    _stop,
    _user,
    _wait_ready,
)

from action_queue.entrypoints.main import Settings
from manual_actions.auth import IdentityStore, Role
from manual_actions.db import create_engine

BASELINE = os.environ.get("BENCH_BASELINE", "HEAD")
CALLS = 1500  # per server
WARM_UP = 300  # per server
ROOT = Path(__file__).resolve().parent.parent
MILLION = Path(__file__).resolve().parent / "bench_action_queue_million.py"


def _baseline_tree(revision: str) -> tuple[Path, str]:
    """A worktree of ``revision`` (checked out again if it exists), and its short commit id."""
    tree = ROOT / ".cache" / "bench-baseline"
    if (tree / ".git").exists():
        subprocess.run(["git", "-C", str(tree), "checkout", "-q", "--detach", revision], check=True)
    else:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-f", "--detach", str(tree), revision],
                       check=True, stdout=subprocess.DEVNULL)
    commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], check=True,
                            capture_output=True, text=True).stdout.strip()
    return tree, commit


def _q(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def test_lets_start_against_a_baseline_revision(stack: Any) -> None:
    baseline, revision = _baseline_tree(BASELINE)
    name = f"aq_bench_ab_{uuid.uuid4().hex[:8]}"
    settings = Settings(kafka_bootstrap_servers=stack.kafka_bootstrap, database_url=stack.database_url(name),
                        identity_database_url=stack.database_url("identity"), consumer_group_id=name)
    codes = {f"baseline {revision}": f"{baseline}/shared/src:{baseline}/services/action-queue/src",
             "working tree": ""}
    servers: dict[str, tuple[asyncio.subprocess.Process, str]] = {}
    engine = create_engine(settings.database_url, pool_size=2)
    identity_engine = create_engine(settings.identity_database_url, pool_size=2)
    clients: dict[str, httpx.AsyncClient] = {}
    try:
        for code, path in codes.items():  # one after the other: each migrates the database first
            port = _free_port()
            server = await asyncio.create_subprocess_exec(
                sys.executable, str(MILLION), "serve", settings.model_dump_json(), str(port),
                env={**os.environ, "PYTHONPATH": path}, stdout=subprocess.DEVNULL)
            servers[code] = (server, f"http://127.0.0.1:{port}")
            await _wait_ready(server, f"http://127.0.0.1:{port}{BENCH_PATH}")
        await _load(engine)
        identity = IdentityStore(identity_engine)
        run = uuid.uuid4().hex[:6]
        agents: list[str] = []
        for t in range(TENANTS):
            tenant = f"bench-t{t:03d}"
            await identity.create_tenant(tenant, tenant)
            for u in random.Random(t).sample(range(ASSIGNEES_PER_TENANT), 3):
                agents.append(await identity.issue_token(tenant, Role.AGENT, uuid.UUID(_user(t, u)),
                                                         label=f"bench {run}"))
        clients = {code: httpx.AsyncClient(base_url=url, timeout=60) for code, (_, url) in servers.items()}

        async def lets_start(code: str, i: int) -> None:
            response = await clients[code].post("/v1/queue/next", headers={
                "Authorization": f"Bearer {agents[i % len(agents)]}", "x-bench-label": "next"})
            assert response.status_code in (200, 204), response.text

        order = list(clients)
        for i in range(WARM_UP):
            for code in order:
                await lets_start(code, i)
        for client in clients.values():
            (await client.delete(BENCH_PATH)).raise_for_status()
        load_before = os.getloadavg()[0]
        for i in range(CALLS):
            for code in (order if i % 2 else order[::-1]):  # who goes first alternates
                await lets_start(code, WARM_UP + i)
        load_after = os.getloadavg()[0]

        print(f"\nLet's Start, {CALLS} calls to each server in turn (load average {load_before:.2f} -> "
              f"{load_after:.2f}); at the server:")
        figures: dict[str, tuple[float, float, float]] = {}
        for code, client in clients.items():
            measured = (await client.get(BENCH_PATH)).json()
            seconds = [s * 1000 for s in measured["seconds"]["next"]]
            read = [s * 1000 for s in measured["sql_seconds"]["next"]]
            cpu = measured["cpu_seconds"] / len(seconds) * 1000
            figures[code] = (statistics.median(seconds), _q(seconds, 0.99), cpu)
            print(f"  {code}: p50 {_q(seconds, 0.5):.2f} ms, p95 {_q(seconds, 0.95):.2f} ms, "
                  f"p99 {_q(seconds, 0.99):.2f} ms; its read p50 {_q(read, 0.5):.2f} ms; "
                  f"CPU per request {cpu:.2f} ms")
        (old_p50, old_p99, old_cpu), (new_p50, new_p99, new_cpu) = figures.values()
        print(f"  working tree / baseline: p50 {new_p50 / old_p50:.2f}, p99 {new_p99 / old_p99:.2f}, "
              f"CPU {new_cpu / old_cpu:.2f}")
    finally:
        for client in clients.values():
            await client.aclose()
        for server, _ in servers.values():
            await _stop(server)
        await engine.dispose()
        await identity_engine.dispose()
