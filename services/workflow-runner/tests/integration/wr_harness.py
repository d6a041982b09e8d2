"""Helpers of the workflow-runner integration tests: the harness around a running service (real
PostgreSQL and Kafka from the session's ``stack``), a recorder of the action-lifecycle topic, and
``eventually``."""

from __future__ import annotations

import contextlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata, TopicPartition

from devstack.testing import eventually
from manual_actions.auth import IdentityStore, Role
from manual_actions.contracts import ActionCompleted, ActionDeleted, ActionType, Envelope, topics
from workflow_runner.entrypoints.main import Service, Settings

# Own database and consumer group, so these tests never share state or partitions with the
# workflow-runner process the end-to-end tests start against the same stack.
DATABASE = "workflow_runner_it"
GROUP = "workflow-runner-it"


@dataclass
class Recorder:
    """Every record on the action-lifecycle topic since the beginning (group-less consumer)."""

    records: list[ConsumerRecord[bytes, bytes]] = field(default_factory=list)

    def raw(self, message_type: str | None = None) -> list[ConsumerRecord[bytes, bytes]]:
        out = []
        for r in self.records:
            if r.value is None:
                continue
            with contextlib.suppress(ValueError):
                if message_type in (None, json.loads(r.value).get("type")):
                    out.append(r)
        return out

    def queued_for(self, enrollment_id: uuid.UUID | str) -> list[ConsumerRecord[bytes, bytes]]:
        """The ActionQueued records of one enrollment, in topic order."""
        return [
            r
            for r in self.raw("ActionQueued")
            if json.loads(r.value)["data"]["enrollment_id"] == str(enrollment_id)
        ]  # type: ignore[arg-type]


@dataclass
class Harness:
    service: Service
    settings: Settings
    identity: IdentityStore
    producer: AIOKafkaProducer
    recorder: Recorder
    bootstrap: str

    def client(self, token: str | None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.service.app), base_url="http://wr", headers=headers
        )

    async def new_tenant(self) -> str:
        tenant = f"wr-{uuid.uuid4().hex[:10]}"
        await self.identity.create_tenant(tenant, f"Tenant {tenant}")
        return tenant

    async def token(self, tenant: str, role: Role, user_id: uuid.UUID | None = None) -> str:
        return await self.identity.issue_token(tenant, role, user_id, label="workflow-runner tests")

    async def produce(self, envelope: Envelope[Any]) -> RecordMetadata:
        return await self.producer.send_and_wait(
            topics.ACTION_LIFECYCLE,
            envelope.to_json_bytes(),
            key=envelope.subject.encode(),
            headers=envelope.kafka_headers(),
        )

    async def wait_consumed(self, *sent: RecordMetadata, within: float = 30.0) -> None:
        """Wait until our consumer group committed past every record in ``sent`` (it was handled or
        deduplicated, and its database transaction committed)."""
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

            await eventually(
                past, what="the consumer group to commit past the produced records", within=within
            )
        finally:
            await admin.close()


def action_completed(queued: dict[str, Any], *, sequence: int = 2, outcome: str = "sent") -> Envelope[Any]:
    """The ActionCompleted action-queue would publish for an ActionQueued envelope (as JSON)."""
    data = queued["data"]
    payload = ActionCompleted(
        action_id=uuid.UUID(data["action_id"]),
        action_type=ActionType(data["action_type"]),
        enrollment_id=uuid.UUID(data["enrollment_id"]),
        step_id=data["step_id"],
        assignee_user_id=uuid.UUID(data["assignee_user_id"]) if data["assignee_user_id"] else None,
        outcome=outcome,
        completed_by=None,
        completed_at=datetime.now(UTC),
    )
    return Envelope.wrap(
        payload, source="action-queue", tenant=queued["tenant"], subject=data["action_id"], sequence=sequence
    )


def action_deleted(queued: dict[str, Any], *, sequence: int = 2) -> Envelope[Any]:
    data = queued["data"]
    payload = ActionDeleted(
        action_id=uuid.UUID(data["action_id"]),
        action_type=ActionType(data["action_type"]),
        enrollment_id=uuid.UUID(data["enrollment_id"]),
        step_id=data["step_id"],
        assignee_user_id=None,
        deleted_by=None,
        reason="created by mistake",
        deleted_at=datetime.now(UTC),
    )
    return Envelope.wrap(
        payload, source="action-queue", tenant=queued["tenant"], subject=data["action_id"], sequence=sequence
    )
