"""``./dev up``: the whole system on this machine with a seeded demo tenant.

Starts the local infrastructure, the five services as separate processes, seeds tenant ``demo``
(a team with a manager and two agents, contacts, a published workflow with a Manual SMS, calls, a
branch on the call outcome, a wait and goals, every contact enrolled), prints the URLs and tokens,
and runs until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from devstack.paths import run_root
from devstack.processes import ServiceProcesses
from devstack.stack import Stack

DEMO_TENANT = "demo"
DEMO_CONTACTS = [
    ("Ada Lovelace", "+14155550101"),
    ("Grace Hopper", "+14155550102"),
    ("Alan Turing", "+442079460103"),
    ("Katherine Johnson", "+14155550104"),
    ("Edsger Dijkstra", "+31201234505"),
    ("Barbara Liskov", "+14155550106"),
]


async def issue_admin_token(identity_url: str, tenant: str) -> str:
    from manual_actions.auth import IdentityStore, Role
    from manual_actions.db import create_engine

    engine = create_engine(identity_url)
    try:
        identity = IdentityStore(engine)
        await identity.create_schema()
        await identity.create_tenant(tenant, "Demo tenant")
        return await identity.issue_token(tenant, Role.ADMIN, None, label="demo admin")
    finally:
        await engine.dispose()


WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]


def seed(runner_url: str, queue_url: str, admin_token: str) -> dict[str, Any]:
    """Create users, contacts and a published workflow, enroll every contact; return what was made."""
    admin = httpx.Client(base_url=runner_url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=30)

    def created(response: httpx.Response) -> dict[str, Any]:
        if response.status_code >= 300:
            raise RuntimeError(
                f"{response.request.method} {response.request.url}: {response.status_code} {response.text}"
            )
        return dict(response.json())

    team = created(admin.post("/v1/teams", json={"name": "Sales"}))
    manager = created(
        admin.post(
            "/v1/users",
            json={"name": "Maya Manager", "phone": "+14155550190", "role": "manager", "team_id": team["id"]},
        )
    )
    agents = [
        created(
            admin.post(
                "/v1/users", json={"name": name, "phone": phone, "role": "agent", "team_id": team["id"]}
            )
        )
        for name, phone in (("Alex Agent", "+14155550191"), ("Sam Agent", "+14155550192"))
    ]
    tokens = {
        user["name"]: created(admin.post(f"/v1/users/{user['id']}/tokens"))["token"]
        for user in [manager, *agents]
    }
    contacts = [
        created(admin.post("/v1/contacts", json={"name": name, "phone": phone}))
        for name, phone in DEMO_CONTACTS
    ]
    # Shows the step graph: a text first (worked within the hour, or the call comes anyway after a
    # day), a call, and another call on the next weekday morning when nobody answered; a reply or
    # STOP from the contact ends it.
    workflow = created(
        admin.post(
            "/v1/workflows",
            json={
                "name": "New lead follow-up",
                "goals": ["replied", "opted_out"],
                "steps": [
                    {
                        "id": "assign",
                        "type": "assign_user",
                        "user_ids": [agent["id"] for agent in agents],
                        "weights": [2, 1],
                    },
                    {
                        "id": "intro-sms",
                        "type": "manual_sms",
                        "action_name": "Intro SMS",
                        "message": (
                            "Hi {{contact.first_name}}, this is {{user.name}}. Is now a good time to talk?"
                        ),
                        "priority": 50,
                        "due_in": "PT1H",
                        "timeout": {"after": "P1D", "then": "intro-call", "action": "keep"},
                    },
                    {"id": "intro-call", "type": "manual_call", "action_name": "Intro call"},
                    {
                        "id": "after-call",
                        "type": "branch",
                        "on": {"no_answer": "next-morning", "voicemail": "next-morning", "default": "end"},
                    },
                    {
                        "id": "next-morning",
                        "type": "wait",
                        "until": {
                            "days": ["mon", "tue", "wed", "thu", "fri"],
                            "start": "09:00",
                            "end": "11:00",
                        },
                    },
                    {"id": "second-call", "type": "manual_call", "action_name": "Second call"},
                ],
            },
        )
    )
    created(admin.post(f"/v1/workflows/{workflow['id']}/publish"))
    for contact in contacts:
        created(admin.post(f"/v1/workflows/{workflow['id']}/enrollments", json={"contact_id": contact["id"]}))

    queue = httpx.Client(base_url=queue_url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=30)
    deadline = time.monotonic() + 60
    listed = 0
    while time.monotonic() < deadline:
        listed = len(queue.get("/v1/actions", params={"limit": 100}).json().get("items", []))
        if listed >= len(contacts):
            break
        time.sleep(0.3)
    return {"tokens": tokens, "workflow_id": workflow["id"], "queued_actions": listed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-wait", action="store_true", help="seed, print, and stop everything again")
    args = parser.parse_args(argv)

    run_dir: Path = run_root() / "demo"
    stack = Stack(run_dir=run_dir)
    services: ServiceProcesses | None = None
    try:
        print("starting Kafka, PostgreSQL and the Twilio mock ...", flush=True)
        stack.start()
        admin_token = asyncio.run(issue_admin_token(stack.database_url("identity"), DEMO_TENANT))
        services = ServiceProcesses(stack, run_dir)
        print("starting the five services ...", flush=True)
        services.start()
        seeded = seed(services.url("workflow-runner"), services.url("action-queue"), admin_token)
        summary = {
            "tenant": DEMO_TENANT,
            "admin_token": admin_token,
            "user_tokens": seeded["tokens"],
            "queued_actions": seeded["queued_actions"],
            "services": services.describe(),
            "dashboard_widget": services.url("dashboard") + "/",
            "kafka": stack.kafka_bootstrap,
            "twilio_mock": stack.twilio_base_url,
            "run_dir": str(run_dir),
        }
        (run_dir / "demo.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps(summary, indent=2), flush=True)
        print(
            "\nTry:  curl -H 'Authorization: Bearer <token>' " + services.url("action-queue") + "/v1/actions"
            "\nAPI docs: " + services.url("action-queue") + "/docs   Ctrl-C stops everything.",
            flush=True,
        )
        if not args.no_wait:
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping ...", flush=True)
        if services is not None:
            services.stop()
        stack.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
