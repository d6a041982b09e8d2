"""The demo that `./dev up` seeds works against the real services: every contact's first action
reaches the queue, and the team's manager sees the team's queue."""

from __future__ import annotations

from typing import Any

import pytest

from devstack.demo import DEMO_CONTACTS, seed
from devstack.processes import ServiceProcesses
from tests.e2e.support import api, eventually

pytestmark = pytest.mark.e2e


def test_the_demo_seed_queues_one_action_per_contact_visible_to_the_teams_manager(
    services: ServiceProcesses, new_tenant: Any
) -> None:
    _tenant, admin_token = new_tenant()
    seeded = seed(services.url("workflow-runner"), services.url("action-queue"), admin_token)

    assert seeded["queued_actions"] == len(DEMO_CONTACTS)
    manager = api(services.url("action-queue"), seeded["tokens"]["Maya Manager"])
    eventually(
        lambda: len(manager.get("/v1/actions", params={"limit": 100}).json()["items"]) == len(DEMO_CONTACTS),
        what="the manager sees every action of the team",
    )
    per_agent = {
        name: len(api(services.url("action-queue"), token).get("/v1/actions").json()["items"])
        for name, token in seeded["tokens"].items()
        if name != "Maya Manager"
    }
    # weighted round robin 2:1 over the two agents
    assert sorted(per_agent.values()) == sorted([len(DEMO_CONTACTS) * 2 // 3, len(DEMO_CONTACTS) // 3])
    runner = api(services.url("workflow-runner"), admin_token)
    workflow = runner.get(f"/v1/workflows/{seeded['workflow_id']}").json()
    assert workflow["published_version"] == 1
