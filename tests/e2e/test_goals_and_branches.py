"""Workflows that react to what happened, through the five real services.

* A reply from the contact (Twilio's signed incoming-message webhook at sms-sender) reaches the
  workflow's goal: workflow-runner stops the enrollment and cancels the call it waited on, which
  action-queue removes from the queue; a STOP afterwards records the contact's SMS opt-out.
* An SMS that the checks at the moment of work skip (the contact has no valid number) takes the
  workflow's `skipped` branch to a call.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from twilio.request_validator import RequestValidator

from devstack.processes import ServiceProcesses
from tests.e2e.support import api, eventually

pytestmark = pytest.mark.e2e


def _unique_number(area: str) -> str:
    n = uuid.uuid4().int
    return f"+1{area}{2 + n % 8}{(n // 8) % 10**6:06d}"


def _incoming_sms(
    stack: Any, services: ServiceProcesses, tenant: str, sender: str, body: str
) -> httpx.Response:
    """POST what Twilio posts for an incoming SMS, signed the way Twilio signs it."""
    url = f"{services.url('sms-sender')}/v1/twilio/inbound/{tenant}"
    params = {
        "MessageSid": "SM" + uuid.uuid4().hex,
        "AccountSid": stack.twilio_account_sid,
        "From": sender,
        "To": "+15005550006",
        "Body": body,
        "NumMedia": "0",
        "ApiVersion": "2010-04-01",
    }
    signature = RequestValidator(stack.twilio_auth_token).compute_signature(url, params)
    return httpx.post(url, data=params, headers={"X-Twilio-Signature": signature}, timeout=10)


def _agent(runner: httpx.Client) -> tuple[str, str]:
    created = runner.post(
        "/v1/users", json={"name": "Alex Agent", "phone": _unique_number("415"), "role": "agent"}
    )
    assert created.status_code == 201, created.text
    agent_id = created.json()["id"]
    return agent_id, runner.post(f"/v1/users/{agent_id}/tokens").json()["token"]


def _published(runner: httpx.Client, body: dict[str, Any]) -> str:
    workflow = runner.post("/v1/workflows", json=body)
    assert workflow.status_code == 201, workflow.text
    published = runner.post(f"/v1/workflows/{workflow.json()['id']}/publish")
    assert published.status_code == 200, published.text
    return str(workflow.json()["id"])


def test_a_reply_stops_the_enrollment_and_removes_its_call_then_stop_opts_out(
    stack: Any, services: ServiceProcesses, new_tenant: Any
) -> None:
    tenant, admin_token = new_tenant()
    runner = api(services.url("workflow-runner"), admin_token)
    agent_id, agent_token = _agent(runner)
    contact_phone = _unique_number("628")
    contact = runner.post("/v1/contacts", json={"name": "Grace Hopper", "phone": contact_phone})
    assert contact.status_code == 201, contact.text
    contact_id = contact.json()["id"]
    workflow_id = _published(
        runner,
        {
            "name": "Call until they answer",
            "goals": ["replied"],
            "steps": [
                {"id": "assign", "type": "assign_user", "user_ids": [agent_id]},
                {"id": "call1", "type": "manual_call", "action_name": "First call"},
                {"id": "call2", "type": "manual_call", "action_name": "Second call"},
            ],
        },
    )
    enrollment = runner.post(f"/v1/workflows/{workflow_id}/enrollments", json={"contact_id": contact_id})
    assert enrollment.status_code == 201, enrollment.text
    enrollment_id = enrollment.json()["id"]
    queue = api(services.url("action-queue"), agent_token)
    call = eventually(
        lambda: next(iter(queue.get("/v1/actions", params={"status": "queued"}).json()["items"]), None),
        what="the call in the agent's queue",
    )
    assert call["type"] == "call"

    answered = _incoming_sms(stack, services, tenant, contact_phone, "Yes, call me after 5pm")
    assert answered.status_code == 200, answered.text

    stopped = eventually(
        lambda: (e := runner.get(f"/v1/enrollments/{enrollment_id}").json())["status"] == "stopped" and e,
        what="the enrollment stopped by the reply",
    )
    assert any("replied" in str(h) for h in stopped["history"]), stopped["history"]
    removed = eventually(
        lambda: (a := queue.get(f"/v1/actions/{call['id']}").json())["status"] == "deleted" and a,
        what="the call cancelled in action-queue",
    )
    assert removed["status_reason"], "the reason for the removal is shown"
    assert queue.post("/v1/queue/next").status_code == 204
    # the second call is never queued for a stopped enrollment
    assert queue.get("/v1/actions").json()["items"] == []
    deleted = queue.get("/v1/actions", params={"status": "deleted"}).json()["items"]
    assert [a["id"] for a in deleted] == [call["id"]]

    assert _incoming_sms(stack, services, tenant, contact_phone, " stop ").status_code == 200
    eventually(
        lambda: runner.get(f"/v1/contacts/{contact_id}").json()["opted_out"]["sms"] is True,
        what="STOP recorded as the contact's SMS opt-out",
    )


def test_an_sms_skipped_at_the_moment_of_work_takes_the_skipped_branch_to_a_call(
    services: ServiceProcesses, new_tenant: Any
) -> None:
    _tenant, admin_token = new_tenant()
    runner = api(services.url("workflow-runner"), admin_token)
    agent_id, agent_token = _agent(runner)
    # no phone number: the SMS cannot be sent, so action-queue skips it when the agent starts it
    contact = runner.post("/v1/contacts", json={"name": "Alan Turing"})
    assert contact.status_code == 201, contact.text
    workflow_id = _published(
        runner,
        {
            "name": "Text, else call",
            "steps": [
                {"id": "assign", "type": "assign_user", "user_ids": [agent_id]},
                {"id": "sms1", "type": "manual_sms", "action_name": "Intro SMS", "message": "Hi!"},
                {"id": "after_sms", "type": "branch", "on": {"skipped": "call1", "default": "end"}},
                {"id": "call1", "type": "manual_call", "action_name": "Call instead"},
            ],
        },
    )
    enrollment = runner.post(
        f"/v1/workflows/{workflow_id}/enrollments", json={"contact_id": contact.json()["id"]}
    )
    assert enrollment.status_code == 201, enrollment.text
    enrollment_id = enrollment.json()["id"]
    queue = api(services.url("action-queue"), agent_token)
    sms = eventually(
        lambda: next(iter(queue.get("/v1/actions", params={"type": "sms"}).json()["items"]), None),
        what="the SMS in the agent's queue",
    )

    queue.post("/v1/queue/next")  # the checks skip the SMS; whatever comes next is not it
    skipped = eventually(
        lambda: (a := queue.get(f"/v1/actions/{sms['id']}").json())["status"] == "skipped" and a,
        what="the SMS skipped at the moment of work",
    )
    assert "number" in (skipped["status_reason"] or ""), skipped["status_reason"]
    call = eventually(
        lambda: next(
            iter(queue.get("/v1/actions", params={"type": "call", "status": "queued"}).json()["items"]), None
        ),
        what="the call queued by the skipped branch",
    )
    assert call["contact"]["name"] == "Alan Turing"
    enrollment_now = runner.get(f"/v1/enrollments/{enrollment_id}").json()
    assert enrollment_now["status"] == "waiting" and enrollment_now["current_step_id"] == "call1"
    assert any(h["step_id"] == "after_sms" for h in enrollment_now["history"]), enrollment_now["history"]
