"""action-queue is SIGKILLed while materialising an event; after a restart the action exists once.

The crash is injected at exact points of the consumer loop with ``MA_CRASH_AT`` (see
``manual_actions.faults``): right after the fetch (nothing written yet: the event must not be
lost) and right after the database commit but before the offset commit (the event is delivered
again: it must not be materialised twice).
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from devstack.processes import ServiceProcesses
from manual_actions import faults
from manual_actions.contracts import ActionQueued, ActionType, ContactSnapshot, Envelope, topics
from tests.e2e.support import api, eventually

pytestmark = pytest.mark.e2e


def _action_queued(tenant: str, workflow_id: uuid.UUID) -> Envelope[ActionQueued]:
    action_id = uuid.uuid4()
    payload = ActionQueued(
        action_id=action_id,
        action_type=ActionType.SMS,
        action_name="Crash test SMS",
        workflow_id=workflow_id,
        workflow_version=1,
        workflow_name="Crash test",
        step_id="sms1",
        enrollment_id=uuid.uuid4(),
        contact=ContactSnapshot(contact_id=uuid.uuid4(), name="Crash Test", phone="+14155550111"),
        assignee_user_id=uuid.uuid4(),
        message="hello",
        queued_at=datetime.now(UTC),
    )
    return Envelope.wrap(payload, source="workflow-runner", tenant=tenant, subject=str(action_id), sequence=1)


async def _produce(bootstrap: str, envelope: Envelope[Any]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(
            topics.ACTION_LIFECYCLE,
            envelope.to_json_bytes(),
            key=envelope.subject.encode(),
            headers=envelope.kafka_headers(),
        )
    finally:
        await producer.stop()


@pytest.mark.parametrize("point", [faults.CONSUMER_AFTER_FETCH, faults.CONSUMER_AFTER_HANDLER])
def test_action_exists_exactly_once_after_sigkill(
    point: str, stack: Any, services: ServiceProcesses, new_tenant: Any
) -> None:
    tenant, admin_token = new_tenant()
    workflow_id = uuid.uuid4()
    queue = api(services.url("action-queue"), admin_token)

    services.kill("action-queue", signal.SIGTERM)
    services.start(["action-queue"], env={faults.CRASH_AT_ENV: point})
    asyncio.run(_produce(stack.kafka_bootstrap, _action_queued(tenant, workflow_id)))
    assert services.wait_exit("action-queue") == -signal.SIGKILL, "the crash point was not reached"

    services.start(["action-queue"])
    listed = eventually(
        lambda: queue.get("/v1/actions", params={"workflow_id": str(workflow_id)}).json()["items"],
        what="the action materialised after the restart",
    )
    assert len(listed) == 1
    # Give a duplicate materialisation time to show up before asserting it did not.
    asyncio.run(asyncio.sleep(2))
    assert len(queue.get("/v1/actions", params={"workflow_id": str(workflow_id)}).json()["items"]) == 1
