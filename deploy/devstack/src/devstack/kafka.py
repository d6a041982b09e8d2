"""Apache Kafka (real broker, KRaft, one node acting as broker and controller) from Maven jars."""

from __future__ import annotations

import asyncio
import base64
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack._util import (
    ComponentError,
    free_port,
    pid_alive,
    port_answers,
    port_is_free,
    read_pid,
    run_checked,
    run_sync,
    spawn,
    tail,
    terminate,
)
from devstack.install import kafka_libs

COMPONENT = "kafka"

LOG4J2 = """\
# Written by devstack: the broker logs to files in its run directory.
status = warn
name = devstack-kafka
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log_file}
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
# Per-partition state changes and request logs drown everything else at INFO.
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.log.name = kafka.log
logger.log.level = WARN
logger.logcleaner.name = kafka.log.LogCleaner
logger.logcleaner.level = WARN
"""


@dataclass
class KafkaState:
    pid: int
    port: int
    controller_port: int
    cluster_id: str
    home: str
    log_file: str

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def server_properties(
    *, port: int, controller_port: int, data_dir: Path, auto_create_topics: bool, partitions: int
) -> str:
    """The single-node KRaft configuration (comments say why each non-default is set)."""
    return f"""\
# Written by devstack for one local single-node cluster.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data_dir}
# One node: every internal topic can only have one replica.
num.partitions={partitions}
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Fewer internal partitions than the default 50: they are created on first use, on 2 cores.
offsets.topic.num.partitions=10
transaction.state.log.num.partitions=10
# Topics come from the registry (ensure_topics), so a typo fails instead of creating a topic.
auto.create.topics.enable={str(auto_create_topics).lower()}
# Consumers join at once instead of waiting 3 s for more members (tests start many groups).
group.initial.rebalance.delay.ms=0
log.retention.hours=168
"""


class Kafka:
    def __init__(
        self, run_dir: Path, java: str, *, auto_create_topics: bool = False, partitions: int = 6
    ) -> None:
        self.home = run_dir / "kafka"
        self.java = java
        self.auto_create_topics = auto_create_topics
        self.partitions = partitions
        self.marker = str(self.home)

    @property
    def log_file(self) -> Path:
        return self.home / "server.log"

    def start(self, previous: dict[str, Any] | None, *, timeout: float = 90) -> KafkaState:
        """Format storage if needed, start the broker, wait until it answers metadata requests."""
        if previous:
            state = KafkaState(**previous)
            if pid_alive(state.pid, self.marker) and self._answers(state.bootstrap, timeout=5):
                return state
            self.stop()
        self.home.mkdir(parents=True, exist_ok=True)
        data = self.home / "data"
        if previous and port_is_free(previous["port"]) and port_is_free(previous["controller_port"]):
            port, controller_port = previous["port"], previous["controller_port"]
        else:
            port, controller_port = free_port(), free_port()
            while controller_port == port:
                controller_port = free_port()
        props = self.home / "server.properties"
        props.write_text(
            server_properties(
                port=port,
                controller_port=controller_port,
                data_dir=data,
                auto_create_topics=self.auto_create_topics,
                partitions=self.partitions,
            )
        )
        log4j = self.home / "log4j2.properties"
        log4j.write_text(LOG4J2.format(log_file=self.log_file))
        classpath = str(kafka_libs()) + "/*"
        jvm = [
            self.java,
            "-Xmx512m",
            "-Xms128m",
            # C1 only: the broker is ready in about half the time on 2 cores, and a local
            # broker never needs C2's peak throughput.
            "-XX:TieredStopAtLevel=1",
            *os.environ.get("MA_KAFKA_JVM_OPTS", "").split(),
            f"-Dlog4j2.configurationFile={log4j}",
            f"-Dkafka.logs.dir={self.home}",
            "-Djava.awt.headless=true",
            "-cp",
            classpath,
        ]
        meta = data / "meta.properties"
        if meta.is_file():
            cluster = _meta_cluster_id(meta)
        else:
            cluster = cluster_id()
            run_checked(
                [*jvm, "kafka.tools.StorageTool", "format", "-t", cluster, "-c", str(props)],
                component=COMPONENT,
                log_file=self.home / "format.log",
                timeout=120,
            )
        stdout_log = self.home / "stdout.log"
        pid = spawn(
            [*jvm, "kafka.Kafka", str(props)], log_file=stdout_log, pid_file=self.pid_file, cwd=self.home
        )
        state = KafkaState(
            pid=pid,
            port=port,
            controller_port=controller_port,
            cluster_id=cluster,
            home=str(self.home),
            log_file=str(self.log_file),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pid_alive(pid, self.marker):
                self.stop()
                raise ComponentError(
                    COMPONENT,
                    f"broker exited during startup:\n{tail(stdout_log)}\n{tail(self.log_file)}",
                    self.log_file,
                )
            if self._answers(state.bootstrap, timeout=5):
                return state
            time.sleep(0.5)
        self.stop()
        raise ComponentError(
            COMPONENT, f"broker did not answer metadata requests within {timeout:.0f} s", self.log_file
        )

    @property
    def pid_file(self) -> Path:
        return self.home / "kafka.pid"

    def stop(self, *, timeout: float = 30) -> None:
        """SIGTERM the broker (a clean KRaft shutdown), SIGKILL it after ``timeout``."""
        terminate(read_pid(self.pid_file), self.marker, timeout=timeout)

    @staticmethod
    def _answers(bootstrap: str, *, timeout: float) -> bool:
        host, _, port = bootstrap.rpartition(":")
        # Probe the socket first: aiokafka logs an error for every refused connection.
        if not port_answers(int(port), host):
            return False
        try:
            return run_sync(_describe_cluster(bootstrap, timeout))
        except Exception:
            return False


async def _describe_cluster(bootstrap: str, wait: float) -> bool:
    """True when the broker returns cluster metadata naming a controller and at least one broker."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(wait * 1000))
    try:
        async with asyncio.timeout(wait):
            await admin.start()
            info = await admin.describe_cluster()
        return bool(info.get("brokers")) and info.get("controller_id", -1) != -1
    finally:
        await admin.close()


def _meta_cluster_id(meta: Path) -> str:
    for line in meta.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "cluster.id":
            return value.strip()
    return ""


def cluster_id() -> str:
    """A random cluster id in Kafka's format (base64url of a UUID, 22 characters).

    Like Kafka's own ``Uuid.randomUuid``, never one starting with ``-``: the storage tool's
    command line would read it as an option and fail (1 start in 64).
    """
    while True:
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not candidate.startswith("-"):
            return candidate
