"""Integration harness of the Twilio-facing services (sms-sender and, through its conftest, the
dialer): the real service wiring (``build_twilio_service``) served on a loopback port that the
Twilio mock calls back, against the session's Kafka, PostgreSQL and Twilio mock.

Isolation from the service processes the end-to-end tests may run against the same stack: an
own database and consumer group (positioned at the end of the commands topic before the service
starts, so it never re-sends earlier tests' commands), and assertions that look only at this
service's requests (their StatusCallback points at this harness's port) and at results carrying
the sids the mock gave this service.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import uvicorn
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import Table, select

from devstack.processes import free_ports
from devstack.testing import eventually
from manual_actions.contracts import Envelope, decode
from manual_actions.kafka import ensure_topics
from manual_actions.twilio_support import (
    TwilioService,
    TwilioServiceSpec,
    TwilioSettings,
    build_twilio_service,
)

FROM_NUMBER = "+15005550006"  # Twilio's magic "valid sender" test number
S = TypeVar("S", bound=TwilioSettings)


async def position_group_at_end(bootstrap: str, group: str, topic: str) -> None:
    """Commit the end offsets of ``topic`` for ``group``: it starts from now, not from the beginning."""
    await ensure_topics(bootstrap)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.commit(dict(ends))
    finally:
        await consumer.stop()


@dataclass
class ResultReader:
    """Every envelope on one topic since its beginning (a group-less consumer)."""

    consumer: AIOKafkaConsumer
    envelopes: list[Envelope[Any]] = field(default_factory=list)

    async def run(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=100)
            for records in batch.values():
                self.envelopes.extend(decode(r.value) for r in records)

    def for_command(self, command_id: uuid.UUID) -> list[Envelope[Any]]:
        return [e for e in self.envelopes if getattr(e.data, "command_id", None) == command_id]


@dataclass
class Harness:
    """A running Twilio-facing service plus what its tests observe it with."""

    service: TwilioService
    settings: TwilioSettings
    stack: Any
    producer: AIOKafkaProducer
    results: ResultReader
    http: httpx.AsyncClient
    _tasks: list[asyncio.Task[Any]]
    _server: uvicorn.Server

    @property
    def public_url(self) -> str:
        return self.settings.public_url("")

    async def produce(self, topic: str, envelope: Envelope[Any]) -> None:
        await self.producer.send_and_wait(
            topic, envelope.to_json_bytes(), key=envelope.subject.encode(), headers=envelope.kafka_headers()
        )

    async def mock_requests(self, command_id: uuid.UUID) -> list[dict[str, Any]]:
        """What this service asked the Twilio mock for ``command_id`` (by its StatusCallback URL)."""
        async with httpx.AsyncClient(base_url=self.stack.twilio_base_url, timeout=10) as mock:
            logged = (await mock.get("/__mock/requests")).json()
        mine = f"command_id={command_id}"
        return [
            r
            for r in logged
            if str(r["params"].get("StatusCallback", "")).startswith(self.public_url)
            and str(r["params"].get("StatusCallback", "")).endswith(mine)
        ]

    async def rows(self, table: Table, command_id: uuid.UUID) -> list[dict[str, Any]]:
        """The rows of ``table`` (in the service's own database) about ``command_id``."""
        async with self.service.engine.connect() as conn:
            found = await conn.execute(select(table).where(table.c.command_id == command_id))
            return [dict(r) for r in found.mappings()]


def settings_for(settings_class: type[S], stack: Any, database: str) -> S:
    """Settings of a service under test: a free loopback port the mock calls back, an own
    database and consumer group, the stack's identity store, Kafka and Twilio mock, and short polling
    intervals."""
    port = free_ports(1)[0]
    return settings_class(
        consumer_group_id=f"{database}-{uuid.uuid4().hex[:8]}",
        http_port=port,
        public_base_url=f"http://127.0.0.1:{port}",
        kafka_bootstrap_servers=stack.kafka_bootstrap,
        database_url=stack.database_url(database),
        identity_database_url=stack.database_url("identity"),
        twilio_account_sid=stack.twilio_account_sid,
        twilio_auth_token=stack.twilio_auth_token,
        twilio_api_base_url=stack.twilio_base_url,
        twilio_from_number=FROM_NUMBER,
        consumer_batch_timeout_ms=50,
        outbox_poll_interval_ms=50,
        dispatch_poll_interval_ms=100,
        dispatch_recovery_interval_seconds=1.0,
    )


@contextlib.asynccontextmanager
async def running(
    spec: TwilioServiceSpec[S], settings: S, stack: Any, results_topic: str
) -> AsyncIterator[Harness]:
    """The service of ``spec`` built by the shared wiring (``build_twilio_service``, as its process
    does) and served until the block ends (``settings`` from ``settings_for``)."""
    await position_group_at_end(stack.kafka_bootstrap, settings.consumer_group_id, spec.commands_topic)
    service = await build_twilio_service(settings, spec)
    harness = await _start(service, settings, stack, results_topic)
    try:
        yield harness
    finally:
        await _stop(harness)


async def _start(service: TwilioService, settings: TwilioSettings, stack: Any, results_topic: str) -> Harness:
    """Serve ``service`` on ``settings.http_port`` with its background loops; read ``results_topic``."""
    server = uvicorn.Server(
        uvicorn.Config(
            service.app, host="127.0.0.1", port=settings.http_port, log_config=None, access_log=False
        )
    )
    tasks = [
        asyncio.create_task(server.serve()),
        *(asyncio.create_task(loop()) for loop in service.background),
    ]
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    reader = AIOKafkaConsumer(
        results_topic,
        bootstrap_servers=stack.kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await reader.start()
    results = ResultReader(reader)
    tasks.append(asyncio.create_task(results.run()))
    http = httpx.AsyncClient(base_url=settings.public_url(""), timeout=10)

    async def ready() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return (await http.get("/ready")).status_code == 200
        return False

    await eventually(ready, what="the service answers /ready")
    return Harness(
        service=service,
        settings=settings,
        stack=stack,
        producer=producer,
        results=results,
        http=http,
        _tasks=tasks,
        _server=server,
    )


async def _stop(harness: Harness) -> None:
    harness._server.should_exit = True
    for task in harness._tasks[1:]:
        task.cancel()
    await asyncio.gather(*harness._tasks, return_exceptions=True)
    for close in harness.service.on_shutdown:
        await close()
    await harness.results.consumer.stop()
    await harness.producer.stop()
    await harness.http.aclose()
