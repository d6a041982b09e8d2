"""The walking skeleton through all five services, over HTTP, on the real broker and database.

One contact goes through a workflow with a Manual SMS and a Manual Call step: every state change
in workflow-runner, action-queue and the dashboard is asserted, the Twilio mock must have received
exactly one SMS and one call, and every message the services put on our topics must validate
against the registry.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from devstack.processes import ServiceProcesses
from manual_actions.contracts import registry, topics
from tests.e2e.support import api, eventually, run_async

pytestmark = pytest.mark.e2e


def _twilio_requests(stack: Any, suffix: str, to: str) -> list[dict[str, Any]]:
    """What the Twilio mock was asked to do at ``suffix`` for number ``to`` (other tests share the mock)."""
    response = httpx.get(f"{stack.twilio_base_url}/__mock/requests", timeout=10)
    response.raise_for_status()
    return [
        r
        for r in response.json()
        if r["path"].endswith(suffix) and r["method"] == "POST" and r["params"].get("To") == to
    ]


def _unique_local_number() -> str:
    """Seven digits of a valid North American local number (the exchange cannot start with 0 or 1)."""
    n = uuid.uuid4().int
    return f"{2 + n % 8}{(n // 8) % 10**6:06d}"


def _pending(dashboard: httpx.Client) -> dict[str, Any]:
    response = dashboard.get("/v1/pending")
    response.raise_for_status()
    return dict(response.json())


def test_sms_then_call_through_all_five_services(
    stack: Any, services: ServiceProcesses, new_tenant: Any
) -> None:
    tenant, admin_token = new_tenant()
    runner = api(services.url("workflow-runner"), admin_token)

    # numbers unique to this test, because other tests share the Twilio mock's request log
    agent_phone = f"+1415{_unique_local_number()}"
    contact_phone = f"+1628{_unique_local_number()}"
    agent = runner.post("/v1/users", json={"name": "Alex Agent", "phone": agent_phone, "role": "agent"})
    assert agent.status_code == 201, agent.text
    agent_id = agent.json()["id"]
    agent_token = runner.post(f"/v1/users/{agent_id}/tokens").json()["token"]
    spaced = f"{contact_phone[:2]} {contact_phone[2:5]} {contact_phone[5:8]} {contact_phone[8:]}"
    contact = runner.post("/v1/contacts", json={"name": "Ada Lovelace", "phone": spaced})
    assert contact.status_code == 201, contact.text
    assert contact.json()["phone"] == contact_phone
    contact_id = contact.json()["id"]

    workflow = runner.post(
        "/v1/workflows",
        json={
            "name": "New lead follow-up",
            "steps": [
                {"id": "assign", "type": "assign_user", "user_ids": [agent_id]},
                {
                    "id": "sms1",
                    "type": "manual_sms",
                    "action_name": "Intro SMS",
                    "message": "Hi {{contact.first_name}}, this is {{user.name}}.",
                },
                {"id": "call1", "type": "manual_call", "action_name": "Intro call"},
            ],
        },
    )
    assert workflow.status_code == 201, workflow.text
    workflow_id = workflow.json()["id"]
    refused = runner.post(f"/v1/workflows/{workflow_id}/enrollments", json={"contact_id": contact_id})
    assert refused.status_code == 409, "enrolling into an unpublished workflow must be refused"
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert runner.post(f"/v1/workflows/{workflow_id}/publish").status_code == 200
    enrollment = runner.post(f"/v1/workflows/{workflow_id}/enrollments", json={"contact_id": contact_id})
    assert enrollment.status_code == 201, enrollment.text
    enrollment_id = enrollment.json()["id"]

    queue = api(services.url("action-queue"), agent_token)
    dashboard = api(services.url("dashboard"), admin_token)

    # 1. the SMS action is materialised into the agent's queue and counted as pending
    sms_action = eventually(
        lambda: next(iter(queue.get("/v1/actions", params={"status": "queued"}).json()["items"]), None),
        what="the SMS action in the agent's queue",
    )
    assert sms_action["type"] == "sms"
    assert sms_action["assignee_user_id"] == agent_id
    assert sms_action["message"] == "Hi Ada, this is Alex Agent."
    assert sms_action["workflow_id"] == workflow_id
    eventually(
        lambda: _pending(dashboard).get("total") == 1 and _pending(dashboard).get("sms") == 1,
        what="dashboard pending: 1 SMS",
    )
    assert _pending(dashboard)["by_assignee"][agent_id]["sms"] == 1
    waiting = runner.get(f"/v1/enrollments/{enrollment_id}").json()
    assert waiting["status"] == "waiting" and waiting["current_step_id"] == "sms1"

    # 2. Let's Start reserves it; sending it goes through sms-sender and Twilio, then completes
    started = queue.post("/v1/queue/next")
    assert started.status_code == 200, started.text
    assert started.json()["id"] == sms_action["id"]
    sent = queue.post(f"/v1/actions/{sms_action['id']}/send-sms", json={})
    assert sent.status_code == 202, sent.text
    done = eventually(
        lambda: (a := queue.get(f"/v1/actions/{sms_action['id']}").json())["status"] == "completed" and a,
        what="SMS action completed after the signed Twilio callback",
    )
    assert done["outcome"] == "sent"
    messages = _twilio_requests(stack, "/Messages.json", to=contact_phone)
    assert len(messages) == 1
    assert messages[0]["params"]["Body"] == "Hi Ada, this is Alex Agent."

    # 3. the workflow moves on to the call step
    call_action = eventually(
        lambda: next(
            iter(queue.get("/v1/actions", params={"status": "queued", "type": "call"}).json()["items"]), None
        ),
        what="the call action queued after the SMS completed",
    )
    assert runner.get(f"/v1/enrollments/{enrollment_id}").json()["current_step_id"] == "call1"
    eventually(
        lambda: (
            _pending(dashboard) | {"by_assignee": None}
            == {"total": 1, "calls": 1, "sms": 0, "by_assignee": None}
        ),
        what="dashboard pending: 1 call, 0 SMS",
    )

    # 4. the call goes through the dialer; the agent records the outcome
    assert queue.post("/v1/queue/next").json()["id"] == call_action["id"]
    placed = queue.post(f"/v1/actions/{call_action['id']}/call", json={"agent_phone": agent_phone})
    assert placed.status_code == 202, placed.text
    ended = eventually(
        lambda: (
            (a := queue.get(f"/v1/actions/{call_action['id']}").json())["status"] == "awaiting_outcome" and a
        ),
        what="call ended and awaiting the agent's outcome",
    )
    assert ended["call_status"] == "completed"
    assert len(_twilio_requests(stack, "/Calls.json", to=agent_phone)) == 1
    missing = queue.post(f"/v1/actions/{call_action['id']}/complete", json={})
    assert missing.status_code == 422 and "outcome" in missing.text
    completed = queue.post(
        f"/v1/actions/{call_action['id']}/complete", json={"outcome": "connected", "notes": "Booked a demo"}
    )
    assert completed.status_code == 200, completed.text

    final = eventually(
        lambda: (e := runner.get(f"/v1/enrollments/{enrollment_id}").json())["status"] == "completed" and e,
        what="enrollment completed after the last step",
    )
    assert [h["step_id"] for h in final["history"] if h["step_id"] in ("sms1", "call1")]
    eventually(lambda: _pending(dashboard)["total"] == 0, what="dashboard pending back to 0")
    assert queue.get("/v1/actions", params={"status": "queued"}).json()["items"] == []
    assert queue.post("/v1/queue/next").status_code == 204

    # 5. everything the services produced for this tenant validates against the registry,
    #    with per-action sequence numbers 1..n and nothing dead-lettered
    produced = run_async(_read_all(stack.kafka_bootstrap))
    mine = [(topic, doc) for topic, doc in produced if doc.get("tenant") == tenant]
    assert {doc["type"] for _, doc in mine} >= {
        "ActionQueued",
        "ActionCompleted",
        "SendSms",
        "SmsSent",
        "PlaceCall",
        "CallCompleted",
    }
    for topic, doc in mine:
        assert registry.validate_envelope(doc) == [], (topic, doc)
        assert topic in registry.topic_for_message(doc["type"]), (topic, doc["type"])
    lifecycle_sequences: dict[str, list[int]] = defaultdict(list)
    for topic, doc in mine:
        if topic == topics.ACTION_LIFECYCLE:
            lifecycle_sequences[doc["subject"]].append(doc["sequence"])
    assert set(lifecycle_sequences) == {sms_action["id"], call_action["id"]}
    for sequences in lifecycle_sequences.values():
        assert sorted(sequences) == list(range(1, len(sequences) + 1))
    dead = [doc for topic, doc in produced if topic == topics.DEAD_LETTERS]
    assert [d for d in dead if d.get("key") in lifecycle_sequences] == []


async def _read_all(bootstrap: str) -> list[tuple[str, dict[str, Any]]]:
    import json

    names = [
        topics.ACTION_LIFECYCLE,
        topics.SMS_COMMANDS,
        topics.CALL_COMMANDS,
        topics.SMS_RESULTS,
        topics.CALL_RESULTS,
        topics.DEAD_LETTERS,
    ]
    consumer = AIOKafkaConsumer(
        *names,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    try:
        out: list[tuple[str, dict[str, Any]]] = []
        while True:
            batch = await consumer.getmany(timeout_ms=2000)
            if not batch:
                break
            for records in batch.values():
                for r in records:
                    if r.topic == topics.DEAD_LETTERS:  # original bytes, maybe not JSON
                        out.append((r.topic, {"key": r.key.decode() if r.key else None}))
                        continue
                    try:
                        out.append((r.topic, json.loads(r.value)))
                    except (TypeError, ValueError):
                        continue  # other tests' deliberately broken messages; ours are checked below
        return out
    finally:
        await consumer.stop()
