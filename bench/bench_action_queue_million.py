"""Benchmark: Let's Start and the first page of a filtered list over 1,000,000 actions.

    ./dev bench -k million

Loads 1,000,000 actions into a fresh action-queue database (100 tenants x 100 assignees = 10,000
assignees, each with the whole mix: 70% queued, 8% reserved, 5% snoozed, 2% scheduled, 10%
completed, 3% skipped, 2% deleted; a third calls; four priorities; half with a due time; 20
workflows per tenant; each with the history entry of its arrival) with one ``INSERT ... SELECT``
from ``generate_series`` inside PostgreSQL (no Python per row) into the table without its
secondary indexes and primary key, which are created again afterwards (as the migrations define
them), then VACUUM ANALYZE.

The app is served by uvicorn in its own process (as ``./dev up`` runs it, without the background
loops, so nothing else competes, except the identity store's listener for token revocations, which
decides how long tokens stay cached), started before the load so it runs the code of that moment.
``CLIENTS`` concurrent HTTP clients (``BENCH_MILLION_CLIENTS``, default 4; 1 shows a request's time
at the server without the others' CPU on the same event loop) in this process call ``POST
/v1/queue/next`` (each call reserves one more action of one of 300 agents), and after that ``GET
/v1/actions`` with filters (an admin's first page of 50: assignee + status, type + statuses sorted
by -priority, overdue sorted by due time, workflow + status), ``CALLS`` times each, after a warm-up
round of each.

Measured at the server, inside its process, so the clients' CPU does not count: the whole request
(an ASGI wrapper around the app, from the request entering it to the end of its response body:
auth, handler, all its SQL, serialisation), the SQL statement the benchmark is about (SQLAlchemy's
before/after cursor events around it), the statements per request (cursor executes on the service's
and the identity store's engines; BEGIN, COMMIT and the pool's ping of an idle connection are not
cursor executes) and the server's CPU seconds per request. Prints p50/p95/p99/max of each (of the
list also per filter), the load average, and the plans (``EXPLAIN (ANALYZE, BUFFERS)``) of the
statements, captured from the real calls. ``BENCH_MILLION_COUNT`` changes the number of actions.
"""

from __future__ import annotations

import asyncio
import contextvars
import cProfile
import hashlib
import json
import os
import random
import socket
import statistics
import subprocess
import sys
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
from manual_actions.service import run_service

COUNT = int(os.environ.get("BENCH_MILLION_COUNT", "1000000"))
TENANTS = 100
ASSIGNEES_PER_TENANT = 100
WORKFLOWS_PER_TENANT = 20
CLIENTS = int(os.environ.get("BENCH_MILLION_CLIENTS", "4"))  # concurrent HTTP clients
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
    1, jsonb_build_array(jsonb_build_object('at', q.queued_at, 'from', NULL, 'to', 'queued', 'by', NULL,
                                            'reason', NULL))
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

# The secondary indexes as the migrations made them, to drop before the load and create after.
INDEXES = """
SELECT indexname, indexdef FROM pg_indexes
WHERE tablename = 'manual_actions' AND indexname <> 'manual_actions_pkey'
"""

BENCH_PATH = "/__bench"  # the server process's own endpoint: its measurements, and the plans
# BENCH_MILLION_PROFILE=<path>: the server process profiles each measured round (cProfile) and
# writes <path>.next and <path>.list (read them with pstats).
PROFILE = os.environ.get("BENCH_MILLION_PROFILE")


def _user(t: int, u: int) -> str:
    return str(uuid.UUID(hashlib.md5(f"user-{t}-{u}".encode()).hexdigest()))


def _workflow(t: int, w: int) -> str:
    return str(uuid.UUID(hashlib.md5(f"workflow-{t}-{w}".encode()).hexdigest()))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------
# The server process: the real app under uvicorn, wrapped to measure itself.

_label: contextvars.ContextVar[str | None] = contextvars.ContextVar("bench_label", default=None)


class ServerTiming:
    """ASGI wrapper: seconds from a request entering the app to the end of its response body, and
    the cursor executes it made, by the request's ``x-bench-label`` header. Answers ``BENCH_PATH``
    itself: GET returns the measurements so far (and the CPU seconds of this process), DELETE
    clears them, POST ``/plans`` explains the first statement of each kind."""

    def __init__(self, app: ASGIApp, engines: list[Any], service_engine: Any) -> None:
        self.app = app
        self.service_engine = service_engine
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self.statements: dict[str, list[int]] = defaultdict(list)
        self.sql_seconds: dict[str, list[float]] = defaultdict(list)
        self.by_filter: dict[str, list[float]] = defaultdict(list)  # list requests by their filter
        self.first: dict[str, tuple[str, Any]] = {}  # statement -> (kind, parameters), first of each
        self._count: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("n", default=None)
        self.cpu_started = time.process_time()
        self.http_protocol = "?"
        self.profile: cProfile.Profile | None = None
        for engine in engines:
            event.listen(engine.sync_engine, "before_cursor_execute", self._before)
            event.listen(engine.sync_engine, "after_cursor_execute", self._after)

    @staticmethod
    def kind_of(statement: str) -> str | None:
        if "manual_actions" not in statement or "LIMIT" not in statement:
            return None
        if "LATERAL" in statement:  # Let's Start's read: the candidate joined to its contact, user, settings
            return "next"
        return None if "FOR UPDATE" in statement else "list"

    def _before(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, *_: Any) -> None:
        counter = self._count.get()
        if counter is not None:
            counter[0] += 1
        kind = self.kind_of(statement)
        if kind is not None and _label.get() == kind:
            self.first.setdefault(statement, (kind, parameters))
            context._bench_started = (kind, time.perf_counter())

    def _after(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, *_: Any) -> None:
        started = getattr(context, "_bench_started", None)
        if started is not None:
            self.sql_seconds[started[0]].append(time.perf_counter() - started[1])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(BENCH_PATH):
            await self._own(scope, send)
            return
        headers = dict(scope.get("headers") or [])
        label = headers.get(b"x-bench-label", b"other").decode()
        list_filter = headers.get(b"x-bench-filter", b"").decode()
        _label.set(label)
        counter = [0]
        self._count.set(counter)
        started = time.perf_counter()

        async def timed_send(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.seconds[label].append(time.perf_counter() - started)
                self.statements[label].append(counter[0])
                if list_filter:
                    self.by_filter[list_filter].append(self.seconds[label][-1])

        await self.app(scope, receive, timed_send)

    async def _own(self, scope: Scope, send: Send) -> None:
        body: Any = None
        if scope["method"] == "DELETE":
            for store in (self.seconds, self.statements, self.sql_seconds, self.by_filter):
                store.clear()
            self.cpu_started = time.process_time()
            if PROFILE:
                self.profile = cProfile.Profile()
                self.profile.enable()
        elif scope["path"].endswith("/plans"):
            body = await self._plans()
        else:
            if self.profile is not None:
                self.profile.disable()
                label = "-".join(sorted(self.seconds)) or "none"
                self.profile.dump_stats(f"{PROFILE}.{label}")
                self.profile = None
            body = {"seconds": self.seconds, "statements": self.statements, "sql_seconds": self.sql_seconds,
                    "by_filter": self.by_filter,
                    "cpu_seconds": time.process_time() - self.cpu_started,
                    "loop": type(asyncio.get_running_loop()).__module__,
                    "http": self.http_protocol}
        payload = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": payload})

    async def _plans(self) -> list[tuple[str, list[str]]]:
        plans: list[tuple[str, list[str]]] = []
        async with self.service_engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None
            for statement, (kind, parameters) in self.first.items():
                # EXPLAIN ANALYZE of Let's Start really locks a row: rolled back.
                transaction = driver.transaction()
                await transaction.start()
                try:
                    rows = await driver.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", *parameters)
                finally:
                    await transaction.rollback()
                plans.append((kind, [row[0] for row in rows]))
        return plans


async def _serve(settings_json: str, port: int) -> None:
    import uvicorn

    from manual_actions.logging import configure_logging

    settings = Settings(**json.loads(settings_json))
    configure_logging(settings.service_name, settings.log_level)  # as the service runs (access log)
    service = await build_service(settings)  # migrated; no background loop runs
    identity = service.app.state.identity
    timing = ServerTiming(service.app, [service.uow.engine, identity.engine], service.uow.engine)
    # As manual_actions.service.serve configures it (the HTTP parser: uvicorn's "auto", httptools).
    config = uvicorn.Config(timing, host="127.0.0.1", port=port, log_config=None, access_log=False,
                            lifespan="off", server_header=False)
    config.load()
    timing.http_protocol = getattr(config.http_protocol_class, "__module__", "?")
    server = uvicorn.Server(config)
    # The one background loop that changes a request's work: the service listens for token
    # revocations and so caches tokens for minutes (decision 0023).
    listener = asyncio.create_task(identity.listen_for_revocations())
    try:
        await server.serve()
    finally:
        for callback in service.on_shutdown:  # among them the listener's stop
            await callback()
        await listener


# ---------------------------------------------------------------------------------------------
# The benchmark process: database load, tokens, clients, report.


def _summary(name: str, values: list[float], unit: str = "ms", scale: float = 1000) -> str:
    xs = sorted(v * scale for v in values)
    q = statistics.quantiles(xs, n=100, method="inclusive")
    return (f"{name}: {len(xs)} calls, p50 {q[49]:.2f} {unit}, p95 {q[94]:.2f} {unit}, "
            f"p99 {q[98]:.2f} {unit}, max {xs[-1]:.2f} {unit}")


async def _load(engine: Any) -> None:
    started = time.perf_counter()
    async with engine.begin() as conn:
        indexes = (await conn.execute(text(INDEXES))).all()
        for name, _ in indexes:
            await conn.execute(text(f"DROP INDEX {name}"))
        await conn.execute(text("ALTER TABLE manual_actions DROP CONSTRAINT manual_actions_pkey"))
        await conn.execute(text(LOAD), {"count": COUNT})
        loaded = time.perf_counter() - started
        await conn.execute(text("SET LOCAL maintenance_work_mem = '256MB'"))
        await conn.execute(text("ALTER TABLE manual_actions ADD PRIMARY KEY (id)"))
        for _, definition in indexes:
            await conn.execute(text(definition))
    indexed = time.perf_counter() - started - loaded
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE manual_actions"))
        size = (await conn.execute(text(
            "SELECT pg_size_pretty(pg_total_relation_size('manual_actions'))"))).scalar_one()
    print(f"\nloaded {COUNT:,} actions in {loaded:.1f}s, primary key and {len(indexes)} indexes in "
          f"{indexed:.1f}s, VACUUM ANALYZE {time.perf_counter() - started - loaded - indexed:.1f}s; "
          f"table with indexes {size}")


async def _wait_ready(server: asyncio.subprocess.Process, url: str) -> None:
    deadline = time.monotonic() + 120
    async with httpx.AsyncClient() as client:
        while True:
            assert server.returncode is None, f"the server process exited with {server.returncode}"
            try:
                (await client.get(url)).raise_for_status()
                return
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server process did not start in 120 s"
                await asyncio.sleep(0.5)


async def test_queries_over_a_million_actions(stack: Any) -> None:
    settings = Settings(kafka_bootstrap_servers=stack.kafka_bootstrap,
                        database_url=stack.database_url(f"aq_bench_1m_{uuid.uuid4().hex[:8]}"),
                        identity_database_url=stack.database_url("identity"),
                        consumer_group_id=f"aq-bench-{uuid.uuid4().hex[:8]}")
    port = _free_port()
    # Its JSON log lines (one access line per request, as in production) go nowhere.
    server = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "serve", settings.model_dump_json(), str(port), stdout=subprocess.DEVNULL)
    engine = create_engine(settings.database_url, pool_size=2)
    identity_engine = create_engine(settings.identity_database_url, pool_size=2)
    identity = IdentityStore(identity_engine)
    run = uuid.uuid4().hex[:6]
    try:
        await _wait_ready(server, f"http://127.0.0.1:{port}{BENCH_PATH}")
        await _load(engine)

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
        rnd = random.Random(11)

        def list_query(t: int) -> tuple[str, dict[str, Any]]:
            kind = rnd.randrange(4)
            if kind == 0:
                assignee = _user(t, rnd.randrange(ASSIGNEES_PER_TENANT))
                return "assignee + queued", {"assignee_user_id": assignee, "status": "queued"}
            if kind == 1:
                return "calls queued/snoozed by -priority", {"type": "call", "status": ["queued", "snoozed"],
                                                             "sort": "-priority"}
            if kind == 2:
                return "overdue by due time", {"overdue": "true", "sort": "due_at"}
            return "workflow + queued", {"workflow_id": _workflow(t, rnd.randrange(WORKFLOWS_PER_TENANT)),
                                         "status": "queued"}

        base_url = f"http://127.0.0.1:{port}"

        async def client_loop(worker: int, kind: str, offset: int) -> None:
            async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
                for i in range(CALLS // CLIENTS):
                    if kind == "next":
                        token, _ = agents[(worker * 7919 + offset + i) % len(agents)]
                        response = await client.post("/v1/queue/next", headers={
                            "Authorization": f"Bearer {token}", "x-bench-label": kind})
                        assert response.status_code in (200, 204), response.text
                    else:
                        token, t = managers[rnd.randrange(TENANTS)]
                        name, query = list_query(t)
                        response = await client.get("/v1/actions", params=query, headers={
                            "Authorization": f"Bearer {token}", "x-bench-label": kind,
                            "x-bench-filter": name})
                        assert response.status_code == 200, response.text

        async with httpx.AsyncClient(base_url=base_url) as control:
            about = (await control.get(BENCH_PATH)).json()
            print(f"{CLIENTS} concurrent HTTP clients (this process), {CALLS} calls per kind, one kind at a "
                  f"time after a warm-up; the app in its own uvicorn process (loop: {about['loop']}, HTTP: "
                  f"{about['http']}); at the server:")
            for kind, title in (("next", "Let's Start (POST /v1/queue/next)"),
                                ("list", "filtered list, first page (GET /v1/actions)")):
                await asyncio.gather(*(client_loop(w, kind, 0) for w in range(CLIENTS)))  # warm-up
                (await control.delete(BENCH_PATH)).raise_for_status()
                load_before = os.getloadavg()[0]
                await asyncio.gather(*(client_loop(w, kind, 1) for w in range(CLIENTS)))
                load_after = os.getloadavg()[0]
                measured = (await control.get(BENCH_PATH)).json()
                seconds = measured["seconds"][kind]
                print(f"  {title} (load average {load_before:.2f} -> {load_after:.2f}):")
                print("    " + _summary("whole request", seconds))
                print("    " + _summary("its SQL statement", measured["sql_seconds"][kind]))
                counts = measured["statements"][kind]
                print(f"    statements (cursor executes) per request: min {min(counts)}, "
                      f"mean {statistics.fmean(counts):.2f}, max {max(counts)}")
                # A token not checked within the identity store's cache TTL costs one statement more.
                by_count: dict[int, list[float]] = defaultdict(list)
                for n, took in zip(counts, seconds, strict=True):
                    by_count[n].append(took)
                for n, took in sorted(by_count.items()):
                    if len(took) >= 20:
                        print("      " + _summary(f"requests with {n} statements", took))
                for name, took in sorted(measured["by_filter"].items()):
                    print("    " + _summary(f"whole request, {name}", took))
                print(f"    server CPU per request: {measured['cpu_seconds'] / len(seconds) * 1000:.2f} ms")
            plans = (await control.post(f"{BENCH_PATH}/plans", timeout=120)).json()
        for kind, rows in plans:
            title = "Let's Start" if kind == "next" else "list"
            print(f"plan of {title}:\n" + "\n".join("    " + row for row in rows))
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        await _stop(server)
        await engine.dispose()
        await identity_engine.dispose()


async def _stop(server: asyncio.subprocess.Process) -> None:
    """SIGTERM the server process, SIGKILL it if it has not exited 30 s later."""
    if server.returncode is None:
        server.terminate()
        try:
            await asyncio.wait_for(server.wait(), 30)
        except TimeoutError:
            server.kill()


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "serve":
    run_service(_serve(sys.argv[2], int(sys.argv[3])))  # on uvloop, as the services run
