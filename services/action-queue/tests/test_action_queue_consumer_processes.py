"""action-queue runs ``ACTION_QUEUE_CONSUMER_PROCESSES`` consumers of its group as one service:
the parent and consumer-only children, which join the group, die with the parent, and take the
parent down with them (tested on the real ``action-queue`` executable, real Kafka and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aq_factories import action_queued, wrap
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from action_queue import metrics
from action_queue.entrypoints import main
from action_queue.entrypoints.main import (
    CONSUMER_ONLY,
    ChildMetricsDirectory,
    Settings,
    default_consumer_processes,
)
from devstack.processes import ServiceProcesses, free_ports
from manual_actions.auth import IdentityStore, Role
from manual_actions.contracts import topics
from manual_actions.db import create_engine
from manual_actions.kafka import TopicSpec, ensure_topics

SERVICE = "action-queue"


def _children(parent: int) -> list[int]:
    """Pids of ``parent``'s consumer-only children (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and CONSUMER_ONLY.encode() in argv:
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


async def _members(bootstrap: str, group: str, *, stable: bool = False) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_consumer_groups([group])
    except KafkaError as exc:  # the group has no coordinator before its first member joins
        if not exc.retriable:
            raise
        return 0
    finally:
        await admin.close()
    # The raw DescribeGroups response: (error_code, group_id, state, protocol_type, protocol, members, ...)
    groups = described[0].groups
    if not groups or (stable and groups[0][2] != "Stable"):
        return 0
    return len(groups[0][5])


@pytest.fixture
def services(stack: Any, tmp_path: Path) -> Any:
    group = f"aq-procs-{uuid.uuid4().hex[:8]}"
    env = {"ACTION_QUEUE_CONSUMER_PROCESSES": "3", "CONSUMER_GROUP_ID": group}
    processes = ServiceProcesses(stack, tmp_path, ports={SERVICE: free_ports(1)[0]}, database_prefix="procs_",
                                 extra_env=env)
    try:
        yield processes, group
    finally:
        processes.stop()


def test_default_is_a_process_per_core_plus_one_at_most_six(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_consumer_processes() == min((os.cpu_count() or 1) + 1, 6)
    monkeypatch.setenv("ACTION_QUEUE_CONSUMER_PROCESSES", "2")
    assert Settings().consumer_processes == 2
    monkeypatch.setenv("ACTION_QUEUE_CONSUMER_PROCESSES", "0")
    with pytest.raises(ValueError, match="consumer_processes"):
        Settings()


def test_a_temporary_metrics_directory_left_by_a_killed_service_is_removed_by_the_next(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        orphaned = tmp_path / f"action-queue-metrics-{gone.pid}-abc"
        running = tmp_path / f"action-queue-metrics-{alive.pid}-def"
        unrelated = tmp_path / "action-queue-metrics-notapid"
        for directory in (orphaned, running, unrelated):
            directory.mkdir()
        made = ChildMetricsDirectory("")
        assert made.path.parent == tmp_path
        assert made.path.name.startswith(f"action-queue-metrics-{os.getpid()}-")
        assert (orphaned.exists(), running.exists(), unrelated.exists()) == (False, True, True)
        asyncio.run(made.close())
        assert not made.path.exists()
    finally:
        alive.kill()
        alive.wait()


def test_children_join_the_group_and_die_with_the_parent(services: Any, stack: Any) -> None:
    processes, group = services
    processes.start([SERVICE])
    parent = processes.processes[SERVICE].pid
    _wait(lambda: len(_children(parent)) == 2, 30, "two consumer-only children")
    children = _children(parent)
    _wait(lambda: asyncio.run(_members(stack.kafka_bootstrap, group)) == 3, 60,
          "three members in the group")

    # SIGKILL leaves the parent no cleanup: the kernel's PR_SET_PDEATHSIG stops the children.
    assert processes.kill(SERVICE, signal.SIGKILL) == -signal.SIGKILL
    _wait(lambda: not any(_alive(c) for c in children), 30, "children outlived their parent")


def test_a_child_killed_takes_the_service_down_the_same_way(services: Any) -> None:
    processes, _ = services
    processes.start([SERVICE])
    parent = processes.processes[SERVICE].pid
    _wait(lambda: len(_children(parent)) == 2, 30, "two consumer-only children")
    first, second = _children(parent)
    os.kill(first, signal.SIGKILL)
    assert processes.wait_exit(SERVICE, timeout=30) == -signal.SIGKILL
    _wait(lambda: not _alive(second), 30, "the other child outlived the service")


def test_sigterm_stops_parent_and_children_cleanly(services: Any) -> None:
    processes, _ = services
    processes.start([SERVICE])
    parent = processes.processes[SERVICE].pid
    _wait(lambda: len(_children(parent)) == 2, 30, "two consumer-only children")
    children = _children(parent)
    assert processes.kill(SERVICE, signal.SIGTERM) == 0
    assert not any(_alive(c) for c in children)


async def _produce_to_every_partition(bootstrap: str, per_partition: int) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        partitions = await producer.partitions_for(topics.ACTION_LIFECYCLE)
        for partition in sorted(partitions):
            for _ in range(per_partition):
                event = action_queued()
                envelope = wrap(event, tenant="tenant-metrics", subject=event.action_id)
                await producer.send_and_wait(topics.ACTION_LIFECYCLE, envelope.to_json_bytes(),
                                             key=envelope.subject.encode(), headers=envelope.kafka_headers(),
                                             partition=partition)
        return len(partitions) * per_partition
    finally:
        await producer.stop()


def _consumer_samples(url: str, group: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    text = httpx.get(f"{url}/metrics", timeout=5.0).text
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("group") == group:
                found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_every_metric_of_the_service_is_merged_with_the_childrens() -> None:
    declared = {name for name, value in vars(metrics).items() if isinstance(value, MetricWrapperBase)}
    merged = {name for name, value in vars(metrics).items() if any(value is m for m in metrics.ALL)}
    assert declared == merged


def test_the_parents_metrics_include_the_childrens_consumers(services: Any, stack: Any) -> None:
    processes, group = services
    processes.start([SERVICE])
    _wait(lambda: asyncio.run(_members(stack.kafka_bootstrap, group, stable=True)) == 3, 60,
          "three members in the group, its partitions assigned")
    # Every partition gets messages, and a member owns only some partitions: the parent's count
    # reaches the total only with the children's.
    sent = asyncio.run(_produce_to_every_partition(stack.kafka_bootstrap, per_partition=5))
    url = processes.url(SERVICE)

    def all_counted() -> bool:
        samples = _consumer_samples(url, group)
        messages = sum(samples.get("manual_actions_consumer_messages_total", {}).values())
        lagged = {dict(k)["partition"] for k in samples.get("manual_actions_consumer_lag", {})}
        return messages == sent and len(lagged) == sent // 5

    _wait(all_counted, 60, f"the parent's /metrics counting all {sent} messages of the group")
    samples = _consumer_samples(url, group)
    assert set(samples["manual_actions_consumer_lag"].values()) == {0.0}

    def applied() -> list[float]:
        text = httpx.get(f"{url}/metrics", timeout=5.0).text
        return [sample.value for family in text_string_to_metric_families(text) for sample in family.samples
                if sample.name == "action_queue_events_applied_total"
                and sample.labels.get("type") == "ActionQueued"]

    # The service's own metrics too: every action was materialised by one of the three processes.
    # (Waited for: a batch's messages are counted when fetched, its actions when handled.)
    _wait(lambda: applied() == [sent], 30, f"the parent's /metrics counting all {sent} actions applied")
    # Each member's batches are counted: at least one per member that had messages.
    assert sum(samples["manual_actions_consumer_batches_total"].values()) >= 3
    assert sum(v for k, v in samples["manual_actions_consumer_handler_duration_seconds_count"].items()) >= 3
    # One metric family per name, whatever the number of processes (valid exposition).
    text = httpx.get(f"{url}/metrics", timeout=5.0).text
    assert text.count("# TYPE manual_actions_consumer_messages_total") <= 1
    assert text.count("# TYPE manual_actions_consumer_messages ") <= 1


async def _admin_token(processes: ServiceProcesses) -> str:
    engine = create_engine(processes.env_for(SERVICE)["IDENTITY_DATABASE_URL"], pool_size=1)
    try:
        identity = IdentityStore(engine)
        await identity.create_schema()
        tenant = f"procs{uuid.uuid4().hex[:10]}"
        await identity.create_tenant(tenant, "Consumer processes test")
        return await identity.issue_token(tenant, Role.ADMIN, None, label="consumer processes test")
    finally:
        await engine.dispose()


def test_bulk_requests_are_worked_by_a_child_away_from_the_api(services: Any) -> None:
    processes, _ = services
    processes.start([SERVICE])
    url = processes.url(SERVICE)
    headers = {"Authorization": f"Bearer {asyncio.run(_admin_token(processes))}"}
    request_id = f"procs-{uuid.uuid4()}"
    accepted = httpx.post(f"{url}/v1/actions/bulk", headers=headers, timeout=10.0, json={
        "request_id": request_id, "operation": "delete", "filter": {"assignee_user_id": str(uuid.uuid4())}})
    assert accepted.status_code == 202, accepted.text
    _wait(lambda: httpx.get(f"{url}/v1/actions/bulk/{request_id}", headers=headers,
                            timeout=10.0).json()["status"] == "done", 30, "the bulk request done")
    lines = [json.loads(line) for line in processes.log_path(SERVICE).read_text().splitlines()
             if line.startswith("{")]
    done = [line["service"] for line in lines
            if line.get("message") == "bulk request done" and line.get("bulk_request_id") == request_id]
    # The children log as "<service>-consumer"; the parent, which serves the API, as the service.
    assert done == [f"{SERVICE}-consumer"]


async def test_a_worker_loop_that_crashes_ends_the_child_with_its_error(
        stack: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # A bulk loop catches its failures; one that escapes would otherwise leave a child that
    # consumes on while no bulk request is ever worked again.
    async def crashing() -> None:
        await asyncio.sleep(0.5)
        raise RuntimeError("worker loop bug")

    monkeypatch.setattr(main, "worker_loops", lambda settings, uow: [crashing])
    settings = Settings(kafka_bootstrap_servers=stack.kafka_bootstrap,
                        database_url=stack.database_url(f"procs_crash_{uuid.uuid4().hex[:8]}"),
                        consumer_group_id=f"aq-procs-crash-{uuid.uuid4().hex[:8]}")
    topic = f"aq-procs-crash-{uuid.uuid4().hex[:8]}"
    await ensure_topics(stack.kafka_bootstrap, topics=[TopicSpec(topic, partitions=1)])
    with pytest.raises(RuntimeError, match="worker loop bug"):
        await asyncio.wait_for(main.consumer_only(settings, topics=[topic]), timeout=60)
