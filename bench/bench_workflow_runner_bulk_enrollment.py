"""Benchmark: one bulk enrollment of 100,000 contacts into a one-step Manual SMS workflow, end to end.

    ./dev bench -k bulk_enrollment

workflow-runner and action-queue run as their real processes (``devstack.processes``) against the
session's Kafka and PostgreSQL, each with its own database. The 100,000 contacts are stored
with COPY through the contact repository, as an import stores them, but without publishing their
ContactUpdated events (action-queue would still be consuming them during the measurement); then
one ``POST /v1/workflows/{id}/bulk-enrollments`` (all at once, filter = every contact) is timed.
Printed:

* enrollment: from the request to the last chunk committed (the run's ``finished_at``);
* publication: from the request to the last ActionQueued marked published by the outbox relay,
  i.e. actions published per second on the runner side;
* visible: from the request until action-queue's database holds all 100,000 actions;
* baseline, measured in the same run: a raw aiokafka producer (idempotent, acks=all, as the
  relay's) writing the same 100,000 envelopes to a fresh topic, and the ratio of the runner's
  publication rate to it.
``test_bulk_enrollment_chunk_path_in_process`` measures the runner's side alone: the chunks of a
10,000-contact run worked in this process (``handlers.bulk.run_chunk``), then the outbox relay
publishing their events, with the CPU of this process and of PostgreSQL per contact.
Not part of the default test run (the file name does not start with ``test_``).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from _bench_support import process_cpu_seconds
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sqlalchemy import text

from devstack.processes import ServiceProcesses
from manual_actions.auth import IdentityStore, Role
from manual_actions.db import create_engine
from manual_actions.outbox import BATCH_HEADER
from workflow_runner.adapters.sql import SqlUnitOfWork
from workflow_runner.domain.people import Contact

COUNT = 100_000
SERVICES = ["workflow-runner", "action-queue"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _scalar(engine: Any, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar_one()


async def _raw_producer_baseline(bootstrap: str, documents: list[tuple[str, bytes]]) -> float:
    """Seconds a bare idempotent acks=all producer needs for ``documents`` (key, value) on a fresh
    6-partition topic: send all, then await every acknowledgement."""
    topic = f"bench-raw-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=6, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=5)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"warm-up", key=b"warm-up")
        started = time.perf_counter()
        acks = [await producer.send(topic, value=value, key=key.encode()) for key, value in documents]
        await asyncio.gather(*acks)
        return time.perf_counter() - started
    finally:
        await producer.stop()


async def _run(stack: Any, run_dir: Path) -> None:
    prefix = f"bench_{uuid.uuid4().hex[:6]}_"
    processes = ServiceProcesses(
        stack, run_dir, ports={name: _free_port() for name in SERVICES}, database_prefix=prefix
    )
    identity_engine = create_engine(stack.database_url(prefix + "identity"), pool_size=2)
    identity = IdentityStore(identity_engine)
    await identity.create_schema()
    tenant = f"bench-{uuid.uuid4().hex[:8]}"
    await identity.create_tenant(tenant, "Bench")
    token = await identity.issue_token(tenant, Role.ADMIN, None, label="bench")
    runner_db = create_engine(stack.database_url(prefix + "workflow_runner"), pool_size=2)
    queue_db = create_engine(stack.database_url(prefix + "action_queue"), pool_size=2)
    await asyncio.to_thread(processes.start, SERVICES)
    try:
        async with httpx.AsyncClient(
            base_url=processes.url("workflow-runner"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=600,
        ) as runner:
            agent = (
                await runner.post(
                    "/v1/users", json={"name": "Bench Agent", "phone": "+14155550190", "role": "agent"}
                )
            ).json()["id"]
            # Stored the way an import stores them (COPY through the contact repository), but
            # without their 100,000 ContactUpdated events, which action-queue would still be
            # consuming while the enrollment is measured.
            started = time.perf_counter()
            now = datetime.now(UTC)
            contacts = [
                Contact(
                    id=uuid.uuid4(),
                    tenant=tenant,
                    name=f"Contact {i}",
                    first_name="Contact",
                    last_name=str(i),
                    phone=f"+1415{2000000 + i:07d}",
                    email=None,
                    timezone=None,
                    owner_user_id=uuid.UUID(agent),
                    created_at=now,
                    updated_at=now,
                    external_id=f"b{i}",
                )
                for i in range(COUNT)
            ]
            uow = SqlUnitOfWork(runner_db)
            async with uow:
                await uow.contacts.upsert_many(contacts, {"name", "phone", "owner_user_id"})
                await uow.commit()
            print(f"\nstored {COUNT} contacts in {time.perf_counter() - started:.1f}s")

            workflow = await _published_sms_workflow(runner)

            t0 = time.perf_counter()
            accepted = await runner.post(
                f"/v1/workflows/{workflow['id']}/bulk-enrollments",
                json={"request_id": "bench", "target": {"filter": {}}},
            )
            assert accepted.status_code == 202, accepted.text
            run_id = accepted.json()["id"]
            accepted_s = time.perf_counter() - t0
            visible_s: float | None = None
            while visible_s is None:
                visible = await _scalar(
                    queue_db, "SELECT count(*) FROM manual_actions WHERE tenant_id = :t", t=tenant
                )
                if visible >= COUNT:
                    visible_s = time.perf_counter() - t0
                await asyncio.sleep(0.1)
            enrolled_s = await _scalar(
                runner_db,
                "SELECT extract(epoch FROM finished_at - created_at) FROM bulk_enrollments WHERE id = :id",
                id=uuid.UUID(run_id),
            )
            published_s = await _scalar(
                runner_db,
                "SELECT extract(epoch FROM max(o.published_at) - b.created_at) "
                "FROM outbox o, bulk_enrollments b WHERE b.id = :id AND o.tenant = :t "
                """AND o.headers @> '[["type", "ActionQueued"]]' GROUP BY b.created_at""",
                id=uuid.UUID(run_id),
                t=tenant,
            )
            async with runner_db.connect() as conn:
                stored = (
                    await conn.execute(
                        text(
                            "SELECT key, value::text, headers::text FROM outbox WHERE tenant = :t "
                            """AND headers @> '[["type", "ActionQueued"]]' ORDER BY id"""
                        ),
                        {"t": tenant},
                    )
                ).all()
        # A batch row (the bulk path writes one per chunk) carries [key, envelope text] pairs.
        rows: list[tuple[str, str]] = []
        for key, value, headers in stored:
            if json.loads(headers)[0][0] == BATCH_HEADER:
                rows.extend((k, v) for k, v in json.loads(value))
            else:
                rows.append((key, value))
        assert len(rows) == COUNT
        raw_s = await _raw_producer_baseline(stack.kafka_bootstrap, [(k, v.encode()) for k, v in rows])
        published_rate = COUNT / float(published_s)
        raw_rate = COUNT / raw_s
        print(f"bulk enrollment of {COUNT} contacts (all at once, one Manual SMS step):")
        print(f"  accepted (targets stored) in {accepted_s * 1000:.0f} ms")
        print(
            f"  all enrollments committed after {float(enrolled_s):.1f}s ({COUNT / float(enrolled_s):,.0f}/s)"
        )
        print(
            f"  all ActionQueued published after {float(published_s):.1f}s ({published_rate:,.0f} actions/s)"
        )
        print(f"  all visible in action-queue after {visible_s:.1f}s ({COUNT / visible_s:,.0f}/s end to end)")
        print(
            f"  baseline raw aiokafka producer, same {COUNT} envelopes: {raw_s:.1f}s ({raw_rate:,.0f}/s); "
            f"runner publication / raw = {published_rate / raw_rate:.2f}"
        )
    finally:
        await asyncio.to_thread(processes.stop)
        await runner_db.dispose()
        await queue_db.dispose()
        await identity_engine.dispose()


def test_bulk_enrollment_of_100k_contacts(stack: Any, tmp_path: Path) -> None:
    asyncio.run(_run(stack, tmp_path))


# --- the runner's side alone, in process ------------------------------------------------------------

IN_PROCESS_COUNT = 10_000


def _postgres_cpu_seconds(stack: Any) -> float:
    """CPU seconds used so far by the stack's PostgreSQL: the postmaster with its reaped children,
    and every live backend (``/proc``; Linux)."""
    data_dir = Path(json.loads(Path(stack.state_file).read_text())["postgres"]["data_dir"])
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    total = process_cpu_seconds(postmaster, with_reaped_children=True)
    for child in Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split():
        try:
            total += process_cpu_seconds(int(child))
        except FileNotFoundError:  # ended meanwhile; counted in the postmaster's reaped children's
            continue
    return total


async def _in_process(stack: Any) -> None:
    from manual_actions.kafka import create_producer
    from manual_actions.outbox import OutboxRelay
    from workflow_runner.adapters.bulk_sql import SqlBulkUnitOfWorkFactory
    from workflow_runner.entrypoints.main import Settings, build_service
    from workflow_runner.handlers import bulk

    prefix = f"bench_{uuid.uuid4().hex[:6]}_"
    settings = Settings(
        kafka_bootstrap_servers=stack.kafka_bootstrap,
        database_url=stack.database_url(prefix + "workflow_runner"),
        identity_database_url=stack.database_url(prefix + "identity"),
    )
    service = await build_service(settings)  # migrations, topics; its background loops not started
    identity = IdentityStore(create_engine(settings.identity_database_url, pool_size=1))
    await identity.create_schema()
    tenant = f"bench-{uuid.uuid4().hex[:8]}"
    await identity.create_tenant(tenant, "Bench")
    token = await identity.issue_token(tenant, Role.ADMIN, None, label="bench")
    producer = create_producer(settings)
    await producer.start()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=service.app),
            base_url="http://runner",
            headers={"Authorization": f"Bearer {token}"},
        ) as runner:
            agent = (
                await runner.post(
                    "/v1/users", json={"name": "Bench Agent", "phone": "+14155550190", "role": "agent"}
                )
            ).json()["id"]
            now = datetime.now(UTC)
            uow = SqlUnitOfWork(service.engine)
            async with uow:
                await uow.contacts.upsert_many(
                    [
                        Contact(
                            id=uuid.uuid4(),
                            tenant=tenant,
                            name=f"Contact {i}",
                            first_name="Contact",
                            last_name=str(i),
                            phone=f"+1415{2000000 + i:07d}",
                            email=None,
                            timezone=None,
                            owner_user_id=uuid.UUID(agent),
                            created_at=now,
                            updated_at=now,
                            external_id=f"b{i}",
                        )
                        for i in range(IN_PROCESS_COUNT)
                    ],
                    {"name", "phone", "owner_user_id"},
                )
                await uow.commit()
            workflow = await _published_sms_workflow(runner)
            accepted = await runner.post(
                f"/v1/workflows/{workflow['id']}/bulk-enrollments",
                json={"request_id": "bench", "target": {"filter": {}}},
            )
            assert accepted.status_code == 202, accepted.text

        factory = SqlBulkUnitOfWorkFactory(service.engine)
        pg0, cpu0, wall0 = _postgres_cpu_seconds(stack), time.process_time(), time.perf_counter()
        chunks = 0
        while await bulk.run_chunk(factory()) is not None:
            chunks += 1
        wall = time.perf_counter() - wall0
        cpu, pg = time.process_time() - cpu0, _postgres_cpu_seconds(stack) - pg0
        print(f"\nbulk enrollment chunk path in process, {IN_PROCESS_COUNT} contacts in {chunks} chunks:")
        print(
            f"  {wall:.2f}s ({IN_PROCESS_COUNT / wall:,.0f} contacts/s); CPU per contact: "
            f"Python {cpu / IN_PROCESS_COUNT * 1e6:.0f} µs, PostgreSQL {pg / IN_PROCESS_COUNT * 1e6:.0f} µs"
        )
        relay = OutboxRelay(service.engine, producer)
        pg0, cpu0, wall0 = _postgres_cpu_seconds(stack), time.process_time(), time.perf_counter()
        published = await relay.publish_pending()
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        await asyncio.sleep(1)  # the relay's own connection has closed: let its backend be reaped
        pg = _postgres_cpu_seconds(stack) - pg0
        assert published >= IN_PROCESS_COUNT  # and the agent's own event, staged before the run
        print(
            f"  outbox relay: {published} ActionQueued in {wall:.2f}s; CPU per action: "
            f"Python {cpu / published * 1e6:.0f} µs, PostgreSQL {pg / published * 1e6:.0f} µs"
        )
        print(f"  load average {os.getloadavg()[0]:.1f}")
    finally:
        await producer.stop()
        for step in service.on_shutdown:
            await step()


def test_bulk_enrollment_chunk_path_in_process(stack: Any) -> None:
    """The runner's side alone: ``run_chunk`` over 10,000 contacts in this process, then the relay
    publishing their ActionQueued; CPU of this process and of PostgreSQL per contact. The stack's
    PostgreSQL should serve nothing else meanwhile (its CPU is counted whole)."""
    asyncio.run(_in_process(stack))


async def _published_sms_workflow(runner: httpx.AsyncClient) -> dict[str, Any]:
    """The benchmark's workflow, published: one Manual SMS step with merge fields."""
    step = {"id": "sms1", "type": "manual_sms", "action_name": "Hello",
            "message": "Hi {{contact.first_name}}, this is {{user.name}}."}
    workflow: dict[str, Any] = (await runner.post("/v1/workflows", json={"name": "Bench SMS",
                                                                        "steps": [step]})).json()
    assert (await runner.post(f"/v1/workflows/{workflow['id']}/publish")).status_code == 200
    return workflow
