"""Queue order with due times, list filters (overdue, queued/due ranges, contact text) and every sort
across keyset pages — against the real PostgreSQL (and Kafka for materialisation)."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aq_factories import action_queued, wrap
from aq_harness import Harness
from test_action_queue_integration import Tenant, _problem

from action_queue.domain import ManualAction

pytestmark = pytest.mark.integration


@pytest.fixture
async def tenant(aq: Harness) -> Tenant:
    return await Tenant.create(aq)


async def _store(aq: Harness, tenant: str, events: list[Any]) -> list[uuid.UUID]:
    actions = [ManualAction.from_queued(tenant, e, sequence=1) for e in events]
    async with aq.service.uow() as uow:
        for action in actions:
            assert await uow.actions.add_if_absent(action)
        await uow.commit()
    return [a.id for a in actions]


async def test_lets_start_orders_by_priority_then_due_time_then_age(aq: Harness, tenant: Tenant) -> None:
    now = datetime.now(UTC)
    agent = tenant.users["agent"]
    old = now - timedelta(hours=3)
    # Expected order: high priority first; within a priority the earlier due time (none = queue time)
    # first; equal due times by age.
    late_due = action_queued(assignee=agent, queued_at=old, due_at=now + timedelta(hours=5))
    undated_old = action_queued(assignee=agent, queued_at=old + timedelta(minutes=1))  # due = queued
    early_due = action_queued(assignee=agent, queued_at=now - timedelta(minutes=5),
                              due_at=now - timedelta(hours=4))
    urgent = action_queued(assignee=agent, queued_at=now - timedelta(minutes=1), priority=50,
                           due_at=now + timedelta(days=2))
    same_due_younger = action_queued(assignee=agent, queued_at=old + timedelta(minutes=2),
                                     due_at=old + timedelta(minutes=1))
    # Materialised through the real consumer, so due_at travels in ActionQueued v2.
    for event in (late_due, undated_old, early_due, urgent, same_due_younger):
        await aq.produce(wrap(event, tenant=tenant.name, subject=event.action_id))
    for event in (late_due, undated_old, early_due, urgent, same_due_younger):
        await tenant.listed(event.action_id)
    expected = [urgent, early_due, undated_old, same_due_younger, late_due]
    got = []
    for _ in expected:
        response = await tenant.agent.post("/v1/queue/next")
        assert response.status_code == 200, response.text
        got.append(response.json()["id"])
    assert got == [str(e.action_id) for e in expected]
    detail = (await tenant.admin.get(f"/v1/actions/{late_due.action_id}")).json()
    assert datetime.fromisoformat(detail["due_at"]) == late_due.due_at
    # The list sorted -priority shows the same order.
    page = (await tenant.admin.get("/v1/actions", params={"sort": "-priority"})).json()
    assert [i["id"] for i in page["items"]] == got


async def _all_pages(tenant: Tenant, params: dict[str, Any], limit: int = 3) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
        response = await tenant.admin.get("/v1/actions", params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["items"]) <= limit
        items.extend(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("pagination did not end")


def _key(sort: str, item: dict[str, Any]) -> tuple[Any, ...]:
    due = datetime.fromisoformat(item["due_at"] or item["queued_at"])
    queued = datetime.fromisoformat(item["queued_at"])
    name = sort.lstrip("-")
    primary: Any = {"priority": item["priority"], "due_at": due, "queued_at": queued}[name]
    ties: tuple[Any, ...] = {"priority": (due, queued, item["id"]), "due_at": (queued, item["id"]),
                             "queued_at": (item["id"],)}[name]
    return primary, ties


async def test_every_sort_pages_through_every_match_once_in_order(aq: Harness, tenant: Tenant) -> None:
    base = datetime.now(UTC) - timedelta(days=1)
    agent = tenant.users["agent"]
    events = []
    for i in range(17):
        # Few distinct priorities, due times and queue times: ties must be broken across page edges.
        events.append(action_queued(
            assignee=agent, priority=(i % 3) * 10, queued_at=base + timedelta(minutes=i % 5),
            due_at=None if i % 4 == 0 else base + timedelta(hours=i % 3)))
    ids = set(map(str, await _store(aq, tenant.name, events)))
    for sort in ("priority", "-priority", "due_at", "-due_at", "queued_at", "-queued_at"):
        items = await _all_pages(tenant, {"sort": sort})
        assert [i["id"] for i in items if i["id"] in ids] == [i["id"] for i in items]
        assert len(items) == len(ids) and {i["id"] for i in items} == ids, sort
        keys = [_key(sort, i) for i in items]
        descending = sort.startswith("-")
        for before, after in itertools.pairwise(keys):
            if before[0] != after[0]:
                assert (before[0] > after[0]) if descending else (before[0] < after[0]), sort
            else:
                assert before[1] < after[1], sort


async def test_filters_by_overdue_date_ranges_and_contact_with_counts(aq: Harness, tenant: Tenant) -> None:
    now = datetime.now(UTC)
    agent = tenant.users["agent"]
    day = now - timedelta(days=10)
    overdue = [action_queued(assignee=agent, queued_at=day + timedelta(minutes=i), contact_name=f"Late {i}",
                             due_at=now - timedelta(hours=i + 1)) for i in range(4)]
    future = [action_queued(assignee=agent, queued_at=day + timedelta(days=1, minutes=i),
                            due_at=now + timedelta(hours=i + 1), phone="+14155550177") for i in range(3)]
    undated = [action_queued(assignee=agent, queued_at=day + timedelta(days=2, minutes=i),
                             contact_name="Grace Hopper") for i in range(2)]
    ids = await _store(aq, tenant.name, overdue + future + undated)
    by_name = {str(i): e for i, e in zip(ids, overdue + future + undated, strict=True)}

    items = await _all_pages(tenant, {"overdue": "true"}, limit=2)
    assert {i["id"] for i in items} == {str(e.action_id) for e in overdue}
    page = (await tenant.admin.get("/v1/actions", params={"overdue": "true", "counts": "true",
                                                          "limit": 1})).json()
    assert page["counts"]["total"] == 4 and page["counts"]["by_status"] == {"queued": 4}
    not_overdue = await _all_pages(tenant, {"overdue": "false"})
    assert {i["id"] for i in not_overdue} == {str(e.action_id) for e in future + undated}
    # A finished action is not overdue any more.
    first = overdue[0].action_id
    assert (await tenant.agent.post(f"/v1/actions/{first}/skip", json={"reason": "no"})).status_code == 200
    assert len(await _all_pages(tenant, {"overdue": "true"})) == 3

    queued_window = await _all_pages(tenant, {"queued_from": (day + timedelta(days=1)).isoformat(),
                                              "queued_to": (day + timedelta(days=2)).isoformat()})
    assert {i["id"] for i in queued_window} == {str(e.action_id) for e in future}
    # due range: an undated action is due when queued (10 days ago); the future ones within 2.5 hours.
    due_window = await _all_pages(tenant, {"due_from": now.isoformat(),
                                           "due_to": (now + timedelta(hours=2, minutes=30)).isoformat(),
                                           "sort": "-due_at"})
    assert [i["id"] for i in due_window] == [str(future[1].action_id), str(future[0].action_id)]
    undated_window = await _all_pages(tenant, {"due_from": (day + timedelta(days=2)).isoformat(),
                                               "due_to": (day + timedelta(days=3)).isoformat()})
    assert {i["id"] for i in undated_window} == {str(e.action_id) for e in undated}

    grace = await _all_pages(tenant, {"contact": "grace hop", "sort": "due_at"})
    assert {i["id"] for i in grace} == {str(e.action_id) for e in undated}
    by_phone = (await tenant.admin.get("/v1/actions", params={"contact": "5550177", "counts": "true"})).json()
    assert by_phone["counts"]["total"] == 3
    assert all(by_name[i["id"]] in future for i in by_phone["items"])
    # The agent's own view applies the same filters.
    mine = (await tenant.agent.get("/v1/actions", params={"overdue": "true"})).json()
    assert len(mine["items"]) == 3
    theirs = (await tenant.other_agent.get("/v1/actions", params={"overdue": "true"})).json()
    assert theirs["items"] == []


async def test_bad_sort_times_and_cursors_are_problems_naming_the_field(aq: Harness, tenant: Tenant) -> None:
    bad_sort = await tenant.admin.get("/v1/actions", params={"sort": "name"})
    assert _problem(bad_sort, 422)["field"] == "query.sort"
    naive = _problem(await tenant.admin.get("/v1/actions", params={"due_from": "2026-01-01T00:00:00"}), 422)
    assert naive["field"] == "query.due_from"
    await _store(aq, tenant.name, [action_queued(assignee=tenant.users["agent"]) for _ in range(3)])
    page = (await tenant.admin.get("/v1/actions", params={"sort": "-priority", "limit": 1})).json()
    other_sort = await tenant.admin.get("/v1/actions",
                                        params={"sort": "due_at", "cursor": page["next_cursor"]})
    assert _problem(other_sort, 422)["field"] == "query.cursor"
    garbage = await tenant.admin.get("/v1/actions", params={"cursor": "bm90LWEtY3Vyc29y"})
    assert _problem(garbage, 422)["field"] == "query.cursor"
