"""The directory API (teams, users, contacts) against the real PostgreSQL and Kafka: CRUD, filters,
keyset pagination, roles, tenant isolation, and the ContactUpdated/UserUpdated events."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from wr_harness import Harness, eventually

from manual_actions.auth import Role
from manual_actions.contracts import registry, topics

pytestmark = pytest.mark.integration

PROBLEM_JSON = "application/problem+json"


async def _tenant(wr: Harness) -> tuple[str, httpx.AsyncClient]:
    tenant = await wr.new_tenant()
    return tenant, wr.client(await wr.token(tenant, Role.ADMIN))


async def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


async def test_contacts_crud_filters_and_keyset_pages(wr: Harness) -> None:
    _, admin = await _tenant(wr)
    agent = await _ok(
        await admin.post("/v1/users", json={"name": "Alex Agent", "phone": "+14155550190", "role": "agent"}),
        201,
    )
    created = []
    for i in range(5):
        created.append(
            await _ok(
                await admin.post(
                    "/v1/contacts",
                    json={
                        "name": f"Contact {i}",
                        "phone": f"+1 415 555 01{i:02d}",
                        "email": f"c{i}@example.com",
                        "timezone": "America/Chicago",
                        "tags": ["even"] if i % 2 == 0 else ["odd"],
                        "owner_user_id": agent["id"] if i < 2 else None,
                        "opted_out": {"sms": i == 4},
                        "external_id": f"crm-{i}",
                        "custom_fields": {"plan": "gold"},
                    },
                ),
                201,
            )
        )
    assert created[4]["opted_out"] == {"sms": True, "call": False}
    assert created[0]["phone"] == "+14155550100" and created[0]["version"] == 1

    pages, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = await _ok(await admin.get("/v1/contacts", params=params))
        pages.append([c["id"] for c in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [i for p in pages for i in p] == [c["id"] for c in created]
    assert [len(p) for p in pages] == [2, 2, 1]

    async def ids(**params: Any) -> list[str]:
        return [c["id"] for c in (await _ok(await admin.get("/v1/contacts", params=params)))["items"]]

    assert await ids(tag="even") == [created[i]["id"] for i in (0, 2, 4)]
    assert await ids(owner_user_id=agent["id"]) == [created[0]["id"], created[1]["id"]]
    assert await ids(unassigned="true") == [created[i]["id"] for i in (2, 3, 4)]
    assert await ids(phone="+1 (415) 555-0103") == [created[3]["id"]]
    assert await ids(email="C3@EXAMPLE.COM") == [created[3]["id"]]
    assert await ids(external_id="crm-2") == [created[2]["id"]]
    assert await ids(q="tact 1") == [created[1]["id"]]

    patched = await _ok(
        await admin.patch(
            f"/v1/contacts/{created[0]['id']}",
            json={"do_not_disturb": {"call": True}, "tags": ["vip"], "owner_user_id": None, "phone": None},
        )
    )
    assert patched["do_not_disturb"] == {"sms": False, "call": True} and patched["tags"] == ["vip"]
    assert patched["owner_user_id"] is None and patched["phone"] is None and patched["version"] == 2
    assert patched["email"] == "c0@example.com" and patched["custom_fields"] == {"plan": "gold"}

    dup = await admin.patch(f"/v1/contacts/{created[0]['id']}", json={"external_id": "crm-1"})
    assert dup.status_code == 409 and dup.json()["errors"][0]["field"] == "body.external_id"

    await _ok(await admin.delete(f"/v1/contacts/{created[1]['id']}"), 204)
    assert (await admin.get(f"/v1/contacts/{created[1]['id']}")).status_code == 404
    assert created[1]["id"] not in await ids()
    assert (await admin.delete(f"/v1/contacts/{created[1]['id']}")).status_code == 404

    bad = await admin.get("/v1/contacts", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "query.cursor"


async def test_invalid_fields_are_named_in_problem_json(wr: Harness) -> None:
    _, admin = await _tenant(wr)
    bad = await admin.post(
        "/v1/contacts",
        json={"name": "X", "phone": "+1 555 555 0100", "timezone": "Mars/Olympus", "email": "x@"},
    )
    assert bad.status_code == 422 and bad.headers["content-type"].startswith(PROBLEM_JSON)
    assert {e["field"] for e in bad.json()["errors"]} == {"body.phone", "body.timezone", "body.email"}
    contact = await _ok(await admin.post("/v1/contacts", json={"name": "Y"}), 201)
    bad = await admin.patch(f"/v1/contacts/{contact['id']}", json={"phone": "12345"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "body.phone"
    bad = await admin.post(
        "/v1/users",
        json={
            "name": "Ada",
            "phone": "+14155552671",
            "role": "agent",
            "working_hours": {"mon": [{"start": "18:00", "end": "09:00"}]},
        },
    )
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "body.working_hours.mon[0].end"
    bad = await admin.post(
        "/v1/users",
        json={"name": "Ada", "phone": "+14155552671", "role": "agent", "availability": {"status": "asleep"}},
    )
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"].startswith("body.availability")


async def test_users_and_teams(wr: Harness) -> None:
    _, admin = await _tenant(wr)
    team = await _ok(await admin.post("/v1/teams", json={"name": "Closers", "description": "Hot leads"}), 201)
    assert (await admin.post("/v1/teams", json={"name": "Closers"})).status_code == 409
    other = await _ok(await admin.post("/v1/teams", json={"name": "Openers"}), 201)
    user = await _ok(
        await admin.post(
            "/v1/users",
            json={
                "name": "Ada Lovelace",
                "phone": "+44 20 7946 0958",
                "role": "agent",
                "team_id": team["id"],
                "timezone": "Europe/London",
                "working_hours": {"mon": [{"start": "09:00", "end": "17:00"}]},
            },
        ),
        201,
    )
    assert user["phone"] == "+442079460958" and user["availability"]["status"] == "available"
    assert (
        user["working_hours"] == {"mon": [{"start": "09:00", "end": "17:00"}]}
        and user["team_id"] == team["id"]
    )
    await _ok(
        await admin.post("/v1/users", json={"name": "Bo", "phone": "+14155550191", "role": "manager"}), 201
    )

    away = await _ok(
        await admin.patch(
            f"/v1/users/{user['id']}",
            json={
                "availability": {
                    "status": "out_of_office",
                    "from": "2020-01-01T00:00:00Z",
                    "until": "2999-01-01T00:00:00Z",
                },
                "team_id": other["id"],
            },
        )
    )
    assert away["availability"] == {
        "status": "out_of_office",
        "from": "2020-01-01T00:00:00Z",
        "until": "2999-01-01T00:00:00Z",
    }
    assert away["available_now"] is False and away["version"] == 2 and away["team_id"] == other["id"]
    assert away["name"] == "Ada Lovelace" and away["timezone"] == "Europe/London"

    listed = await _ok(await admin.get("/v1/users", params={"team_id": other["id"]}))
    assert [u["id"] for u in listed["items"]] == [user["id"]]
    listed = await _ok(await admin.get("/v1/users", params={"role": "manager"}))
    assert [u["name"] for u in listed["items"]] == ["Bo"]
    listed = await _ok(await admin.get("/v1/users", params={"availability": "out_of_office"}))
    assert [u["id"] for u in listed["items"]] == [user["id"]]

    assert (await admin.delete(f"/v1/teams/{other['id']}")).status_code == 409
    renamed = await _ok(await admin.patch(f"/v1/teams/{other['id']}", json={"name": "Openers EU"}))
    assert renamed["name"] == "Openers EU" and renamed["description"] is None
    await _ok(await admin.delete(f"/v1/users/{user['id']}"), 204)
    assert (await admin.get(f"/v1/users/{user['id']}")).status_code == 404
    await _ok(await admin.delete(f"/v1/teams/{other['id']}"), 204)
    teams = await _ok(await admin.get("/v1/teams"))
    assert [t["id"] for t in teams["items"]] == [team["id"]]


async def test_agents_only_read_and_other_tenants_see_nothing(wr: Harness) -> None:
    tenant, admin = await _tenant(wr)
    team = await _ok(await admin.post("/v1/teams", json={"name": "A-team"}), 201)
    user = await _ok(
        await admin.post("/v1/users", json={"name": "Al", "phone": "+14155550190", "role": "agent"}), 201
    )
    contact = await _ok(await admin.post("/v1/contacts", json={"name": "Cy"}), 201)
    agent = wr.client((await _ok(await admin.post(f"/v1/users/{user['id']}/tokens"), 201))["token"])
    manager = wr.client(await wr.token(tenant, Role.MANAGER))

    entities = {"teams": team["id"], "users": user["id"], "contacts": contact["id"]}
    for kind, entity_id in entities.items():
        assert (await agent.get(f"/v1/{kind}")).status_code == 200, kind
        assert (await agent.get(f"/v1/{kind}/{entity_id}")).status_code == 200, kind
    writes = [
        ("POST", "/v1/teams", {"name": "B"}),
        ("PATCH", f"/v1/teams/{team['id']}", {"name": "B"}),
        ("DELETE", f"/v1/teams/{team['id']}", None),
        ("POST", "/v1/users", {"name": "B", "phone": "+14155550192", "role": "agent"}),
        ("PATCH", f"/v1/users/{user['id']}", {"name": "B"}),
        ("DELETE", f"/v1/users/{user['id']}", None),
        ("POST", "/v1/contacts", {"name": "B"}),
        ("PATCH", f"/v1/contacts/{contact['id']}", {"name": "B"}),
        ("DELETE", f"/v1/contacts/{contact['id']}", None),
    ]
    for method, path, body in writes:
        response = await agent.request(method, path, json=body)
        assert response.status_code == 403, (method, path)
        assert response.headers["content-type"].startswith(PROBLEM_JSON)
        if "/contacts" not in path:  # managers manage contacts only
            assert (await manager.request(method, path, json=body)).status_code == 403, (method, path)
    assert (await manager.patch(f"/v1/contacts/{contact['id']}", json={"tags": ["m"]})).status_code == 200

    _, stranger = await _tenant(wr)
    for kind, entity_id in entities.items():
        for method, body in (("GET", None), ("PATCH", {"name": "Mine now"}), ("DELETE", None)):
            response = await stranger.request(method, f"/v1/{kind}/{entity_id}", json=body)
            assert response.status_code == 404, (method, kind)
            assert response.headers["content-type"].startswith(PROBLEM_JSON)
        assert (await stranger.get(f"/v1/{kind}")).json()["items"] == []
    # Referencing another tenant's team or owner is an invalid field, not a link.
    bad = await stranger.post("/v1/contacts", json={"name": "Z", "owner_user_id": user["id"]})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "body.owner_user_id"
    bad = await stranger.post(
        "/v1/users", json={"name": "Z", "phone": "+14155550193", "role": "agent", "team_id": team["id"]}
    )
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "body.team_id"
    assert (await admin.get(f"/v1/contacts/{contact['id']}")).json()["name"] == "Cy"


async def test_directory_changes_are_published_on_compacted_topics(wr: Harness) -> None:
    tenant, admin = await _tenant(wr)
    user = await _ok(
        await admin.post("/v1/users", json={"name": "Al", "phone": "+14155550190", "role": "agent"}), 201
    )
    await _ok(await admin.patch(f"/v1/users/{user['id']}", json={"availability": {"status": "away"}}))
    contact = await _ok(await admin.post("/v1/contacts", json={"name": "Cy", "phone": "+14155550132"}), 201)
    await _ok(await admin.patch(f"/v1/contacts/{contact['id']}", json={"opted_out": {"sms": True}}))

    reader = AIOKafkaConsumer(
        topics.CONTACTS,
        topics.USERS,
        bootstrap_servers=wr.bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await reader.start()
    seen: list[tuple[str, bytes | None, dict[str, Any]]] = []
    try:

        async def probe() -> bool:
            for records in (await reader.getmany(timeout_ms=200)).values():
                for r in records:
                    document = json.loads(r.value or b"{}")
                    if document.get("tenant") == tenant:
                        seen.append((r.topic, r.key, document))
            return len(seen) >= 4

        await eventually(probe, what="2 UserUpdated and 2 ContactUpdated of this tenant")
    finally:
        await reader.stop()
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for topic, key, document in seen:
        assert key is not None and key.decode() == document["subject"]
        assert registry.validate_envelope(document, topic) == []
        by_topic.setdefault(topic, []).append(document)
    users_seen = by_topic[topics.USERS]
    assert [(d["subject"], d["sequence"]) for d in users_seen] == [(user["id"], 1), (user["id"], 2)]
    assert users_seen[1]["data"]["availability"]["status"] == "away"
    contacts_seen = by_topic[topics.CONTACTS]
    assert [(d["subject"], d["sequence"]) for d in contacts_seen] == [(contact["id"], 1), (contact["id"], 2)]
    assert contacts_seen[1]["data"]["opted_out"] == {"sms": True, "call": False}

    admin_client = AIOKafkaAdminClient(bootstrap_servers=wr.bootstrap)
    await admin_client.start()
    try:
        described = await admin_client.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in (topics.CONTACTS, topics.USERS)]
        )
    finally:
        await admin_client.close()
    policies = {
        resource[3]: {c[0]: c[1] for c in resource[4]}["cleanup.policy"]
        for response in described
        for resource in response.resources
    }
    assert policies == {topics.CONTACTS: "compact", topics.USERS: "compact"}
