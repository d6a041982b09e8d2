"""action-queue is SIGKILLed while materialising an event; after a restart the action exists once.

The crash is injected at exact points of the consumer loop with ``MA_CRASH_AT`` (see
``manual_actions.faults``): right after the fetch (nothing written yet: the event must not be
lost) and right after the database commit but before the offset commit (the event is delivered
again: it must not be materialised twice).
"""

from __future__ import annotations

import signal
import time
import uuid
from typing import Any

import pytest

from devstack.processes import ServiceProcesses
from manual_actions import faults
from tests.e2e.support import action_queued, api, eventually, produce, run_async, wait_caught_up

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("point", [faults.CONSUMER_AFTER_FETCH, faults.CONSUMER_AFTER_HANDLER])
def test_action_exists_exactly_once_after_sigkill(
    point: str, stack: Any, services: ServiceProcesses, new_tenant: Any
) -> None:
    tenant, admin_token = new_tenant()
    workflow_id = uuid.uuid4()
    queue = api(services.url("action-queue"), admin_token)

    # Produce a marker first, so the group has a committed offset on the topic, then wait until
    # the group has worked off every message other tests left on the shared topics.
    run_async(produce(stack.kafka_bootstrap, action_queued(tenant, uuid.uuid4())))
    run_async(wait_caught_up(stack.kafka_bootstrap, "action-queue"))
    services.kill("action-queue", signal.SIGTERM)
    services.start(["action-queue"], env={faults.CRASH_AT_ENV: point})
    run_async(produce(stack.kafka_bootstrap, action_queued(tenant, workflow_id)))
    assert services.wait_exit("action-queue") == -signal.SIGKILL, "the crash point was not reached"

    services.start(["action-queue"])
    listed = eventually(
        lambda: queue.get("/v1/actions", params={"workflow_id": str(workflow_id)}).json()["items"],
        what="the action materialised after the restart",
    )
    assert len(listed) == 1
    # Give a duplicate materialisation time to show up before asserting it did not.
    time.sleep(2)
    assert len(queue.get("/v1/actions", params={"workflow_id": str(workflow_id)}).json()["items"]) == 1
