"""The dashboard against the real Kafka and PostgreSQL of the session's stack.

The faust app and the HTTP app run in the test's event loop (HTTP through ASGI, no socket);
lifecycle events are produced to the real action-lifecycle topic. Each test uses its own faust
app id (consumer group, changelog and delta topics) and its own tenants.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from dashboard.entrypoints.api import build_app
from dashboard.entrypoints.streams import CRASH_AFTER_STATE_STORED, DashboardStreams, running
from dashboard.settings import DashboardSettings
from devstack.processes import ServiceProcesses, free_ports
from manual_actions import faults
from manual_actions.auth import IdentityStore, Role
from manual_actions.contracts import (
    ActionCompleted,
    ActionDeleted,
    ActionQueued,
    ActionType,
    ContactSnapshot,
    Envelope,
    topics,
)
from manual_actions.contracts.dead_letters import parse_dead_letter_headers
from manual_actions.db import create_engine
from manual_actions.kafka import ensure_topics

pytestmark = pytest.mark.integration

ZERO = {"total": 0, "calls": 0, "sms": 0}


async def eventually(probe: Callable[[], Awaitable[Any]], *, within: float = 60.0, what: str) -> Any:
    """Await ``probe`` until it returns a truthy value; fail naming ``what`` and the last value."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")


def queued(tenant: str, action_type: ActionType, assignee: uuid.UUID | None) -> Envelope[ActionQueued]:
    action_id = uuid.uuid4()
    payload = ActionQueued(
        action_id=action_id, action_type=action_type, action_name=f"Manual {action_type.value}",
        workflow_id=uuid.uuid4(), workflow_version=1, workflow_name="Dashboard test", step_id="s1",
        enrollment_id=uuid.uuid4(),
        contact=ContactSnapshot(contact_id=uuid.uuid4(), name="Dana Contact", phone="+14155550123"),
        assignee_user_id=assignee, message="Hi" if action_type is ActionType.SMS else None,
        queued_at=datetime.now(UTC),
    )
    return Envelope.wrap(payload, source="workflow-runner", tenant=tenant, subject=str(action_id), sequence=1)


def completed(of: Envelope[ActionQueued], sequence: int) -> Envelope[ActionCompleted]:
    data = of.data
    payload = ActionCompleted(
        action_id=data.action_id, action_type=data.action_type, enrollment_id=data.enrollment_id,
        step_id=data.step_id, assignee_user_id=data.assignee_user_id, outcome="connected", notes=None,
        completed_by=data.assignee_user_id, completed_at=datetime.now(UTC),
    )
    return Envelope.wrap(
        payload, source="action-queue", tenant=of.tenant, subject=of.subject, sequence=sequence
    )


def deleted(of: Envelope[ActionQueued], sequence: int) -> Envelope[ActionDeleted]:
    data = of.data
    payload = ActionDeleted(
        action_id=data.action_id, action_type=data.action_type, enrollment_id=data.enrollment_id,
        step_id=data.step_id, assignee_user_id=data.assignee_user_id, deleted_by=None,
        deleted_at=datetime.now(UTC),
    )
    return Envelope.wrap(
        payload, source="action-queue", tenant=of.tenant, subject=of.subject, sequence=sequence
    )


class Harness:
    """One dashboard configuration (app id) that can be started, stopped and started again."""

    def __init__(self, settings: DashboardSettings, identity: IdentityStore) -> None:
        self.settings = settings
        self.identity = identity
        self.produced: dict[TopicPartition, int] = {}

    @property
    def group(self) -> str:
        return self.settings.faust_app_id

    @property
    def delta_topic(self) -> str:
        return f"{self.group}-pending-deltas"

    async def produce(self, *items: Envelope[Any] | tuple[str, bytes]) -> None:
        """Produce envelopes (keyed by subject) or raw (key, value) pairs to action-lifecycle."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers, enable_idempotence=True, acks="all"
        )
        await producer.start()
        try:
            for item in items:
                if isinstance(item, Envelope):
                    meta = await producer.send_and_wait(
                        topics.ACTION_LIFECYCLE, item.to_json_bytes(), key=item.subject.encode(),
                        headers=item.kafka_headers(),
                    )
                else:
                    key, value = item
                    meta = await producer.send_and_wait(topics.ACTION_LIFECYCLE, value, key=key.encode())
                tp = TopicPartition(meta.topic, meta.partition)
                self.produced[tp] = max(self.produced.get(tp, -1), meta.offset)
        finally:
            await producer.stop()

    async def quiescent(self, *, whole_topic: bool = False) -> bool:
        """Everything we produced (or, with ``whole_topic``, everything on action-lifecycle), and
        every delta, was processed and committed by the app."""
        partitions = range(self.settings.pending_partitions)
        lifecycle_tps = [TopicPartition(topics.ACTION_LIFECYCLE, p) for p in partitions]
        delta_tps = [TopicPartition(self.delta_topic, p) for p in partitions]
        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap_servers)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap_servers)
        await admin.start()
        await consumer.start()
        try:
            committed = await admin.list_consumer_group_offsets(self.group)
            ends = await consumer.end_offsets(delta_tps + lifecycle_tps if whole_topic else delta_tps)
        finally:
            await consumer.stop()
            await admin.close()

        def at(tp: TopicPartition) -> int:
            meta = committed.get(tp)
            return meta.offset if meta is not None else 0

        lifecycle_done = all(at(tp) > offset for tp, offset in self.produced.items())
        return lifecycle_done and all(at(tp) >= end for tp, end in ends.items())

    async def reset_offsets_to_zero(self) -> None:
        """Make the (stopped) app process everything again: a worst-case crash replay."""
        tps = [TopicPartition(topics.ACTION_LIFECYCLE, p) for p in range(self.settings.pending_partitions)]
        tps += [TopicPartition(self.delta_topic, p) for p in range(self.settings.pending_partitions)]
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers, group_id=self.group,
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            consumer.assign(tps)
            await consumer.commit(dict.fromkeys(tps, 0))
        finally:
            await consumer.stop()

    async def client(self, streams: DashboardStreams) -> httpx.AsyncClient:
        app = build_app(streams, self.identity)
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dashboard")


@pytest.fixture
async def harness(stack: Any, tmp_path: Path) -> AsyncIterator[Harness]:
    await ensure_topics(stack.kafka_bootstrap)
    identity_url = stack.database_url("identity")
    settings = DashboardSettings(
        kafka_bootstrap_servers=stack.kafka_bootstrap,
        identity_database_url=identity_url,
        faust_app_id=f"manual-actions.dashboard-test-{uuid.uuid4().hex[:8]}",
        faust_datadir=str(tmp_path / "faust"),
        faust_commit_interval_seconds=0.3,
    )
    engine = create_engine(identity_url, pool_size=2)
    identity = IdentityStore(engine)
    await identity.create_schema()
    try:
        yield Harness(settings, identity)
    finally:
        await engine.dispose()


async def new_tenant(identity: IdentityStore) -> str:
    tenant = f"dash{uuid.uuid4().hex[:10]}"
    await identity.create_tenant(tenant, f"Dashboard test {tenant}")
    return tenant


async def get_pending(client: httpx.AsyncClient, token: str) -> dict[str, Any]:
    response = await client.get("/v1/pending", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def wait_ready(client: httpx.AsyncClient) -> None:
    async def ready() -> bool:
        return (await client.get("/ready")).status_code == 200

    await eventually(ready, what="/ready to pass (faust started, tables recovered)")


async def test_counts_are_exact_and_survive_restart_and_full_replay(harness: Harness) -> None:
    identity = harness.identity
    t1, t2 = await new_tenant(identity), await new_tenant(identity)
    alice, bob, carol = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    admin1 = await identity.issue_token(t1, Role.ADMIN, label="dashboard test")
    agent_alice = await identity.issue_token(t1, Role.AGENT, alice, label="dashboard test")
    agent_bob = await identity.issue_token(t1, Role.AGENT, bob, label="dashboard test")
    manager2 = await identity.issue_token(t2, Role.MANAGER, label="dashboard test")

    sms_alice = queued(t1, ActionType.SMS, alice)
    call_alice = queued(t1, ActionType.CALL, alice)
    call_bob = queued(t1, ActionType.CALL, bob)
    sms_carol = queued(t2, ActionType.SMS, carol)
    unassigned_call = queued(t2, ActionType.CALL, None)
    garbage_key = f"garbage-{uuid.uuid4()}"
    # JSON but no envelope (other tests read this shared topic as JSON, filtered by tenant).
    garbage = json.dumps({"type": "NoSuchEvent", "version": 1, "tenant": t1}).encode()

    streams = DashboardStreams(harness.settings)
    async with running(streams), await harness.client(streams) as client:
        await wait_ready(client)
        await harness.produce(
            sms_alice, call_alice, call_bob, sms_carol, unassigned_call,
            completed(sms_alice, 2),
            call_bob,                    # the same ActionQueued twice: counted once
            deleted(call_bob, 2),
            deleted(call_bob, 3),        # deleting twice changes nothing more
            completed(unassigned_call, 2),
            deleted(unassigned_call, 3),  # delete after complete: nothing
            (garbage_key, garbage),       # dead-lettered, counting goes on
        )
        await eventually(harness.quiescent, what="every produced message processed and committed")

        expected_t1 = {
            "total": 1, "calls": 1, "sms": 0,
            "by_assignee": {str(alice): {"total": 1, "calls": 1, "sms": 0}},
        }
        # t2 also has an unassigned call, completed: nothing of it remains.
        expected_t2 = {
            "total": 1, "calls": 0, "sms": 1,
            "by_assignee": {str(carol): {"total": 1, "calls": 0, "sms": 1}},
        }
        assert await get_pending(client, admin1) == expected_t1
        assert await get_pending(client, manager2) == expected_t2
        # An agent sees the tenant's totals and only their own assignee entry (zeros included).
        assert await get_pending(client, agent_alice) == expected_t1
        assert await get_pending(client, agent_bob) == {**expected_t1, "by_assignee": {str(bob): ZERO}}

        metrics = (await client.get("/metrics")).text
        assert f'dashboard_pending_actions{{tenant="{t1}",type="call"}} 1.0' in metrics
        assert f'dashboard_pending_actions{{tenant="{t2}",type="sms"}} 1.0' in metrics
        assert "dashboard_lifecycle_events_total" in metrics

    await assert_dead_lettered(harness, garbage_key, garbage)

    # Restart: the tables come back from their changelogs, nothing is counted again.
    streams = DashboardStreams(harness.settings)
    async with running(streams), await harness.client(streams) as client:
        await wait_ready(client)
        assert await get_pending(client, admin1) == expected_t1
        assert await get_pending(client, manager2) == expected_t2

    # Worst case of a crash: every lifecycle message and every delta is delivered again.
    await harness.reset_offsets_to_zero()
    streams = DashboardStreams(harness.settings)
    async with running(streams), await harness.client(streams) as client:
        await wait_ready(client)
        await eventually(harness.quiescent, what="the replay processed and committed")
        assert await get_pending(client, admin1) == expected_t1
        assert await get_pending(client, manager2) == expected_t2
        # New events after the replay are still counted.
        late = queued(t1, ActionType.SMS, None)
        await harness.produce(late)
        await eventually(harness.quiescent, what="the late event processed")
        body = await get_pending(client, admin1)
        # Unassigned actions count in the totals, under no assignee.
        assert (body["total"], body["calls"], body["sms"]) == (2, 1, 1)
        assert body["by_assignee"] == expected_t1["by_assignee"]


async def assert_dead_lettered(harness: Harness, key: str, value: bytes) -> None:
    consumer = AIOKafkaConsumer(
        topics.DEAD_LETTERS, bootstrap_servers=harness.settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest", enable_auto_commit=False,
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    if record.key == key.encode():
                        info = parse_dead_letter_headers(list(record.headers))
                        assert info.original_topic == topics.ACTION_LIFECYCLE
                        assert info.consumer_group == harness.group
                        assert info.reason  # whatever decode() said was wrong
                        assert record.value == value
                        return
        raise AssertionError(f"no dead letter with key {key}")
    finally:
        await consumer.stop()


async def test_http_errors_are_problem_json_and_widget_is_served(harness: Harness) -> None:
    streams = DashboardStreams(harness.settings)
    app = build_app(streams, harness.identity)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as client:
        # Not started: not ready, and counts are refused rather than shown as zeros.
        ready = await client.get("/ready")
        assert ready.status_code == 503 and "stream-processor" in ready.json()["failing"]
        tenant = await new_tenant(harness.identity)
        token = await harness.identity.issue_token(tenant, Role.MANAGER, label="dashboard test")
        unavailable = await client.get("/v1/pending", headers={"Authorization": f"Bearer {token}"})
        assert unavailable.status_code == 503
        assert unavailable.headers["content-type"].startswith("application/problem+json")

        anonymous = await client.get("/v1/pending")
        assert anonymous.status_code == 401
        assert anonymous.headers["content-type"].startswith("application/problem+json")
        bad = await client.get("/v1/pending", headers={"Authorization": "Bearer ma_nope_nope"})
        assert bad.status_code == 401

        page = await client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert 'src="widget.js"' in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        script = await client.get("/widget.js")
        assert script.status_code == 200 and "v1/pending" in script.text
        assert (await client.get("/health")).status_code == 200


async def test_sigkill_between_state_and_delta_counts_once(
    harness: Harness, stack: Any, tmp_path: Path
) -> None:
    """The dashboard process is killed after stage 1 stored an action's new state but before its
    delta left: after the restart the event is redelivered, finds the state already advanced, and
    must re-send the stored delta (recomputing would find nothing to count)."""
    processes = ServiceProcesses(
        stack, tmp_path / "processes", ports={"dashboard": free_ports(1)[0]},
        extra_env={
            "FAUST_APP_ID": harness.group,
            "FAUST_DATADIR": str(tmp_path / "faust"),
            "FAUST_COMMIT_INTERVAL_SECONDS": "0.3",
            # The killed process's group membership must expire before the restart gets its
            # partitions: keep that wait at the broker's minimum.
            "FAUST_SESSION_TIMEOUT_SECONDS": "6",
            "IDENTITY_DATABASE_URL": harness.settings.identity_database_url,
        },
    )
    tenant = await new_tenant(harness.identity)
    token = await harness.identity.issue_token(tenant, Role.MANAGER, label="dashboard test")
    try:
        # A first run catches up with whatever the topic already holds, so that the crash point
        # below is reached by our event, not by an older one.
        await asyncio.to_thread(processes.start, ["dashboard"])

        async def caught_up() -> bool:
            return await harness.quiescent(whole_topic=True)

        await eventually(caught_up, what="the first run to process the whole lifecycle topic")
        await asyncio.to_thread(processes.stop)

        crash = {faults.CRASH_AT_ENV: CRASH_AFTER_STATE_STORED}
        await asyncio.to_thread(processes.start, ["dashboard"], env=crash)
        await harness.produce(queued(tenant, ActionType.CALL, uuid.uuid4()))
        code = await asyncio.to_thread(processes.wait_exit, "dashboard")
        assert code == -signal.SIGKILL, f"the crash point was not reached (exit code {code})"

        await asyncio.to_thread(processes.start, ["dashboard"])
        async with httpx.AsyncClient(base_url=processes.url("dashboard"), timeout=10) as client:

            async def counted() -> Any:
                body = await get_pending(client, token)
                return body if body["total"] else None

            await eventually(counted, what="the action counted after the restart")
            await eventually(harness.quiescent, what="the redelivered event processed and committed")
            body = await get_pending(client, token)
            assert (body["total"], body["calls"], body["sms"]) == (1, 1, 0)
            metrics = (await client.get("/metrics")).text
            assert 'dashboard_lifecycle_events_total{outcome="redelivered"}' in metrics, (
                "the restarted process did not see the event again: the crash did not hit the window"
            )
    finally:
        await asyncio.to_thread(processes.stop)


async def test_the_dashboard_alone_sets_up_a_fresh_identity_database(
    harness: Harness, stack: Any, tmp_path: Path
) -> None:
    """Started before any other service, on an identity database nobody has set up yet, the
    dashboard creates the identity tables as the other services do: a bad token is a 401, not a
    server error, and a token issued afterwards is accepted."""
    identity_url = stack.database_url(f"identity_fresh_{uuid.uuid4().hex[:8]}")
    processes = ServiceProcesses(
        stack, tmp_path / "processes", ports={"dashboard": free_ports(1)[0]},
        extra_env={"FAUST_APP_ID": f"{harness.group}-fresh", "FAUST_DATADIR": str(tmp_path / "faust"),
                   "IDENTITY_DATABASE_URL": identity_url},
    )
    engine = create_engine(identity_url, pool_size=1)
    try:
        await asyncio.to_thread(processes.start, ["dashboard"])
        async with httpx.AsyncClient(base_url=processes.url("dashboard"), timeout=10) as client:
            bad = await client.get("/v1/pending", headers={"Authorization": "Bearer ma_nope_nope"})
            assert bad.status_code == 401, bad.text
            identity = IdentityStore(engine)
            tenant = await new_tenant(identity)
            token = await identity.issue_token(tenant, Role.MANAGER, label="dashboard test")
            body = await get_pending(client, token)
            assert body["total"] == 0
    finally:
        await asyncio.to_thread(processes.stop)
        await engine.dispose()


async def test_failure_to_send_a_delta_crashes_without_committing(harness: Harness) -> None:
    """Producing the delta fails: the app must crash (``run`` raises) without acknowledging the
    message, so that the next start processes it again, rather than commit past it."""
    tenant = await new_tenant(harness.identity)
    token = await harness.identity.issue_token(tenant, Role.ADMIN, label="dashboard test")
    streams = DashboardStreams(harness.settings)
    original_send = streams.delta_topic.send
    failures = 0

    async def failing_send(**kwargs: Any) -> Any:
        nonlocal failures
        if kwargs.get("key") == tenant.encode():
            failures += 1
            raise RuntimeError("broker refused the delta")
        return await original_send(**kwargs)

    streams.delta_topic.send = failing_send  # type: ignore[method-assign]
    task = asyncio.create_task(streams.run())
    async with await harness.client(streams) as client:
        await wait_ready(client)
        # Catch up with (and commit) whatever other tests left on the shared topic first, so that
        # the restart below re-reads only from our message, not the whole backlog.
        await eventually(
            lambda: harness.quiescent(whole_topic=True),
            within=180,
            what="the first run to process the whole lifecycle topic",
        )
        await harness.produce(queued(tenant, ActionType.SMS, None))
        with pytest.raises(RuntimeError, match=r"stream processing failed.*broker refused the delta"):
            await asyncio.wait_for(task, timeout=60)
    assert failures, "the failing send was never reached"
    (tp, offset), = harness.produced.items()
    admin = AIOKafkaAdminClient(bootstrap_servers=harness.settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(harness.group, partitions=[tp])
    finally:
        await admin.close()
    meta = committed.get(tp)
    assert meta is None or meta.offset <= offset, f"committed past the failed message: {meta}"

    # The next start processes the message again and counts it.
    streams = DashboardStreams(harness.settings)
    async with running(streams), await harness.client(streams) as client:
        await wait_ready(client)
        await eventually(harness.quiescent, within=120, what="the failed message processed after the restart")
        body = await get_pending(client, token)
        assert (body["total"], body["sms"]) == (1, 1)
