"""Benchmark: Let's Start and the first page of a filtered list over 1,000,000 actions.

    ./dev bench -k million

Loads 1,000,000 actions into a fresh action-queue database (100 tenants x 100 assignees = 10,000
assignees, each with the whole mix: 70% queued, 8% reserved, 5% snoozed, 2% scheduled, 10%
completed, 3% skipped, 2% deleted; a third calls; four priorities; half with a due time; 20
workflows per tenant) with one ``INSERT ... SELECT`` from ``generate_series`` inside PostgreSQL
(no Python per row), then VACUUM ANALYZE. Then ``CLIENTS`` concurrent clients call, through the
real HTTP app, ``POST /v1/queue/next`` (each call reserves one more action of one of 300 agents),
and after that ``GET /v1/actions`` with filters (an admin's first page of 50: assignee + status,
type + statuses sorted by -priority, overdue sorted by due time, workflow + status), ``CALLS``
times each, after a warm-up round of each.

Both are measured at the server, not as client round trips: the whole request (an ASGI wrapper
around the app, from the request entering it to the end of its response body: auth, handler, all
its SQL, serialisation) and the one SQL statement that the benchmark is about (SQLAlchemy's
before/after cursor events around it). Prints p50/p95/p99/max of each and the plans
(``EXPLAIN (ANALYZE, BUFFERS)``) of the statements, captured from the real calls.
``BENCH_MILLION_COUNT`` changes the number of actions.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import statistics
import time
import uuid
from collections import defaultdict
from typing import Any

import httpx
from sqlalchemy import event, text
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from action_queue.entrypoints.main import Settings, build_service
from manual_actions.auth import IdentityStore, Role
from manual_actions.db import create_engine

COUNT = int(os.environ.get("BENCH_MILLION_COUNT", "1000000"))
TENANTS = 100
ASSIGNEES_PER_TENANT = 100
WORKFLOWS_PER_TENANT = 20
CLIENTS = 4
CALLS = 500  # per query kind

# Deterministic ids so the benchmark can address users and workflows without reading them back.
_USER = "md5('user-' || {t} || '-' || {u})::uuid"
_WORKFLOW = "md5('workflow-' || {t} || '-' || {w})::uuid"

LOAD = f"""
INSERT INTO manual_actions (id, tenant_id, action_type, action_name, workflow_id, workflow_name,
    workflow_version, step_id, enrollment_id, contact_id, contact_name, contact_phone, assignee_user_id,
    message, priority, status, reserved_by, lease_expires_at, snoozed_until, send_at, queued_at, due_at,
    completed_at, version, history)
SELECT gen_random_uuid(), 'bench-t' || lpad(t::text, 3, '0'),
    CASE WHEN (j / 7) % 3 = 0 THEN 'call' ELSE 'sms' END, 'Follow up',
    {_WORKFLOW.format(t="t", w=f"(j / 11) % {WORKFLOWS_PER_TENANT}")}, 'Inbound leads', 1, 'step1',
    gen_random_uuid(), gen_random_uuid(), 'Contact ' || i, '+1415555' || lpad((i % 10000)::text, 4, '0'),
    {_USER.format(t="t", u="a")},
    CASE WHEN (j / 7) % 3 = 0 THEN NULL ELSE 'Hello' END,
    (j / 5) % 4 * 3,
    s.status,
    CASE WHEN s.status = 'reserved' THEN {_USER.format(t="t", u="a")} END,
    CASE WHEN s.status = 'reserved' THEN now() + interval '5 minutes' END,
    CASE WHEN s.status = 'snoozed' THEN now() + interval '1 day' END,
    CASE WHEN s.status = 'scheduled' THEN now() + interval '1 day' END,
    q.queued_at,
    CASE WHEN (j / 3) % 2 = 0 THEN q.queued_at + (((j / 13) % 72) || ' hours')::interval END,
    CASE WHEN s.status IN ('completed', 'skipped') THEN q.queued_at + interval '1 hour' END,
    1, '[]'::jsonb
FROM generate_series(0, :count - 1) AS i,
    -- row i belongs to tenant t; j numbers the rows within the tenant, and assignee a = j % 100 while
    -- every other attribute is drawn from other digits of j, so each assignee has the whole mix.
    LATERAL (SELECT i % {TENANTS} AS t, i / {TENANTS} AS j) AS tj,
    LATERAL (SELECT j % {ASSIGNEES_PER_TENANT} AS a, (j / {ASSIGNEES_PER_TENANT}) % 100 AS m) AS am,
    LATERAL (SELECT now() - ((i % 43200) || ' minutes')::interval AS queued_at) AS q,
    LATERAL (SELECT CASE
        WHEN m < 70 THEN 'queued' WHEN m < 78 THEN 'reserved' WHEN m < 83 THEN 'snoozed'
        WHEN m < 85 THEN 'scheduled' WHEN m < 95 THEN 'completed' WHEN m < 98 THEN 'skipped'
        ELSE 'deleted' END AS status) AS s
"""


def _user(t: int, u: int) -> str:
    return str(uuid.UUID(hashlib.md5(f"user-{t}-{u}".encode()).hexdigest()))


def _workflow(t: int, w: int) -> str:
    return str(uuid.UUID(hashlib.md5(f"workflow-{t}-{w}".encode()).hexdigest()))


class ServerTiming:
    """ASGI wrapper: seconds from a request entering the app to the end of its response body, by
    the request's ``x-bench-label`` header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.seconds: dict[str, list[float]] = defaultdict(list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        label = dict(scope.get("headers") or []).get(b"x-bench-label", b"other").decode()
        started = time.perf_counter()

        async def timed_send(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.seconds[label].append(time.perf_counter() - started)

        await self.app(scope, receive, timed_send)


def _summary(name: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return (f"{name}: {len(ms)} calls, p50 {q[49]:.2f} ms, p95 {q[94]:.2f} ms, p99 {q[98]:.2f} ms, "
            f"max {ms[-1]:.2f} ms")


async def test_queries_over_a_million_actions(stack: Any) -> None:
    settings = Settings(kafka_bootstrap_servers=stack.kafka_bootstrap,
                        database_url=stack.database_url(f"aq_bench_1m_{uuid.uuid4().hex[:8]}"),
                        identity_database_url=stack.database_url("identity"),
                        consumer_group_id=f"aq-bench-{uuid.uuid4().hex[:8]}")
    service = await build_service(settings)  # migrated; no loop runs (nothing else competes)
    engine = service.uow.engine
    identity_engine = create_engine(settings.identity_database_url, pool_size=2)
    identity = IdentityStore(identity_engine)
    run = uuid.uuid4().hex[:6]
    try:
        started = time.perf_counter()
        async with engine.begin() as conn:
            await conn.execute(text(LOAD), {"count": COUNT})
        loaded = time.perf_counter() - started
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("VACUUM ANALYZE manual_actions"))
            size = (await conn.execute(text(
                "SELECT pg_size_pretty(pg_total_relation_size('manual_actions'))"))).scalar_one()
        print(f"\nloaded {COUNT:,} actions in {loaded:.1f}s (+ VACUUM ANALYZE "
              f"{time.perf_counter() - started - loaded:.1f}s), table with indexes {size}")

        # The tenants are named by the loader; the identity store gets a tenant per name and run.
        agents: list[tuple[str, str]] = []  # (token, tenant)
        managers: list[tuple[str, int]] = []
        for t in range(TENANTS):
            tenant = f"bench-t{t:03d}"
            await identity.create_tenant(tenant, tenant)
            managers.append((await identity.issue_token(tenant, Role.ADMIN, None, label=f"bench {run}"), t))
            for u in random.Random(t).sample(range(ASSIGNEES_PER_TENANT), 3):
                agents.append((await identity.issue_token(tenant, Role.AGENT, uuid.UUID(_user(t, u)),
                                                          label=f"bench {run}"), tenant))

        timing = ServerTiming(service.app)
        transport = httpx.ASGITransport(app=timing)
        statements: dict[str, Any] = {}  # statement text -> (name, parameters), first of each
        sql_seconds: dict[str, list[float]] = defaultdict(list)

        def kind_of(statement: str) -> str | None:
            if "FROM manual_actions" not in statement or "LIMIT" not in statement:
                return None
            if "FOR UPDATE SKIP LOCKED" in statement:
                return "next"
            return None if "FOR UPDATE" in statement else "list"

        def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, *_: Any) -> None:
            kind = kind_of(statement)
            if kind is not None:
                statements.setdefault(statement, (kind, parameters))
                context._bench_started = (kind, time.perf_counter())

        def after(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, *_: Any) -> None:
            started = getattr(context, "_bench_started", None)
            if started is not None:
                sql_seconds[started[0]].append(time.perf_counter() - started[1])

        event.listen(engine.sync_engine, "before_cursor_execute", before)
        event.listen(engine.sync_engine, "after_cursor_execute", after)
        rnd = random.Random(11)

        def list_query(t: int) -> dict[str, Any]:
            kind = rnd.randrange(4)
            if kind == 0:
                return {"assignee_user_id": _user(t, rnd.randrange(ASSIGNEES_PER_TENANT)), "status": "queued"}
            if kind == 1:
                return {"type": "call", "status": ["queued", "snoozed"], "sort": "-priority"}
            if kind == 2:
                return {"overdue": "true", "sort": "due_at"}
            return {"workflow_id": _workflow(t, rnd.randrange(WORKFLOWS_PER_TENANT)), "status": "queued"}

        async def client_loop(worker: int, kind: str) -> None:
            async with httpx.AsyncClient(transport=transport, base_url="http://aq") as client:
                for i in range(CALLS // CLIENTS):
                    if kind == "next":
                        token, _ = agents[(worker * 7919 + i) % len(agents)]
                        response = await client.post("/v1/queue/next", headers={
                            "Authorization": f"Bearer {token}", "x-bench-label": kind})
                        assert response.status_code in (200, 204), response.text
                    else:
                        token, t = managers[rnd.randrange(TENANTS)]
                        response = await client.get("/v1/actions", params=list_query(t), headers={
                            "Authorization": f"Bearer {token}", "x-bench-label": kind})
                        assert response.status_code == 200, response.text

        print(f"{CLIENTS} concurrent clients, {CALLS} calls per kind, one kind at a time after a warm-up; "
              "at the server:")
        for kind, title in (("next", "Let's Start (POST /v1/queue/next)"),
                            ("list", "filtered list, first page (GET /v1/actions)")):
            await asyncio.gather(*(client_loop(w, kind) for w in range(CLIENTS)))  # warm-up, not counted
            timing.seconds.clear()
            sql_seconds.clear()
            await asyncio.gather(*(client_loop(w, kind) for w in range(CLIENTS)))
            print("  " + _summary(f"{title}, whole request", timing.seconds[kind]))
            print("  " + _summary(f"{title}, its SQL statement", sql_seconds[kind]))
        event.remove(engine.sync_engine, "before_cursor_execute", before)
        event.remove(engine.sync_engine, "after_cursor_execute", after)

        async with engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None
            for statement, (kind, parameters) in statements.items():
                # EXPLAIN ANALYZE of Let's Start really locks a row: rolled back.
                transaction = driver.transaction()
                await transaction.start()
                try:
                    plan = await driver.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", *parameters)
                finally:
                    await transaction.rollback()
                title = "Let's Start" if kind == "next" else "list"
                print(f"plan of {title}:\n" + "\n".join("    " + row[0] for row in plan))
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        for callback in service.on_shutdown:
            await callback()
        await identity_engine.dispose()

