"""Helpers of the action-queue integration tests: the harness around a running service, a recorder
of everything on our topics, and ``eventually``."""

from __future__ import annotations

import contextlib
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata, TopicPartition

from action_queue.entrypoints.main import Service, Settings
from devstack.testing import eventually
from manual_actions.auth import IdentityStore, Role
from manual_actions.contracts import Envelope, topics

# Own database and consumer group, so these tests never share state or partitions with the
# action-queue processes the end-to-end tests start against the same stack.
DATABASE = "action_queue_it"
GROUP = "action-queue-it"
RECORDED_TOPICS = (topics.ACTION_LIFECYCLE, topics.SMS_COMMANDS, topics.CALL_COMMANDS, topics.SMS_RESULTS,
                   topics.CALL_RESULTS, topics.DEAD_LETTERS)


@dataclass
class Recorder:
    """Every record on our topics since the beginning, read by a group-less consumer."""

    records: list[ConsumerRecord[bytes, bytes]] = field(default_factory=list)

    def envelopes(self, topic: str) -> list[dict[str, Any]]:
        out = []
        for r in self.records:
            if r.topic == topic and r.value is not None:
                with contextlib.suppress(ValueError):
                    out.append(json.loads(r.value))
        return out

    def about(self, topic: str, subject: uuid.UUID, message_type: str | None = None) -> list[dict[str, Any]]:
        """The envelopes on ``topic`` about ``subject`` (of ``message_type``, if given), in order."""
        return [e for e in self.envelopes(topic)
                if e.get("subject") == str(subject) and message_type in (None, e.get("type"))]


@dataclass
class Harness:
    service: Service
    settings: Settings
    identity: IdentityStore
    producer: AIOKafkaProducer
    recorder: Recorder
    reader: AIOKafkaConsumer
    bootstrap: str

    async def recorder_caught_up(self) -> None:
        """Wait until the recorder has read everything that is on our topics now."""
        partitions = self.reader.assignment()
        ends = await self.reader.end_offsets(list(partitions))

        async def caught_up() -> bool:
            return all([await self.reader.position(tp) >= end for tp, end in ends.items()])

        await eventually(caught_up, what="the recorder to read up to the current end of our topics")

    def client(self, token: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.service.app), base_url="http://aq",
                                 headers={"Authorization": f"Bearer {token}"})

    async def produce(self, envelope: Envelope[Any], topic: str = topics.ACTION_LIFECYCLE,
                      partition: int | None = None) -> RecordMetadata:
        return await self.producer.send_and_wait(topic, envelope.to_json_bytes(),
                                                 key=envelope.subject.encode(),
                                                 headers=envelope.kafka_headers(), partition=partition)

    async def produce_raw(self, value: bytes, key: bytes, topic: str = topics.ACTION_LIFECYCLE,
                          partition: int | None = None) -> RecordMetadata:
        return await self.producer.send_and_wait(topic, value, key=key, partition=partition)

    async def wait_consumed(self, *sent: RecordMetadata, within: float = 30.0) -> None:
        """Wait until our consumer group committed past every record in ``sent`` (so it was handled,
        dead-lettered or deduplicated, and its database transaction committed)."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            async def past() -> bool:
                try:
                    committed = await admin.list_consumer_group_offsets(GROUP)
                except KafkaError as exc:  # e.g. the group coordinator is still starting
                    if not exc.retriable:
                        raise
                    return False
                return all(
                    (meta := committed.get(TopicPartition(r.topic, r.partition))) is not None
                    and meta.offset > r.offset
                    for r in sent
                )

            await eventually(past, what="the consumer group to commit past the produced records",
                             within=within)
        finally:
            await admin.close()

    async def new_tenant(self) -> str:
        tenant = f"aq-{uuid.uuid4().hex[:10]}"
        await self.identity.create_tenant(tenant, f"Tenant {tenant}")
        return tenant

    async def token(self, tenant: str, role: Role, user_id: uuid.UUID | None = None) -> str:
        return await self.identity.issue_token(tenant, role, user_id, label="action-queue tests")
