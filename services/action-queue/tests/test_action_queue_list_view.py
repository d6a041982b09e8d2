"""The list's read path: summaries read straight from the table (no domain objects) and serialised
by orjson. They must say exactly what the domain action and pydantic's response model say."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

from aq_factories import T0, action_queued
from aq_harness import Harness

from action_queue.domain import ActionStatus, ManualAction
from action_queue.entrypoints.http import _encode_cursor, _page_json
from action_queue.entrypoints.schemas import ActionPage, ActionView, ListCounts
from action_queue.handlers.ports import ActionFilter, ActionSummary, Cursor, Sort
from manual_actions.contracts import ActionType

AGENT = uuid.UUID(int=7)
NOW = T0 + timedelta(hours=3)


def _actions_in_every_shape(tenant: str) -> list[ManualAction]:
    """Null and set values in every optional column, both types, microseconds and whole seconds."""
    plain = ManualAction.from_queued(tenant, action_queued(assignee=AGENT, priority=3), 1)
    reserved = ManualAction.from_queued(tenant, action_queued(
        assignee=AGENT, due_at=T0 + timedelta(hours=1, microseconds=1500), phone=None), 1)
    reserved.reserve(AGENT, NOW + timedelta(microseconds=250), timedelta(minutes=5))
    call = ManualAction.from_queued(tenant, action_queued(action_type=ActionType.CALL, assignee=AGENT,
                                                         contact_name="Zoë \"Z\" O'Brien"), 1)
    call.reserve(AGENT, NOW, timedelta(minutes=5))
    call.place_call(AGENT, uuid.uuid4(), agent_phone="+14155550199", now=NOW)
    call.complete("no_answer", AGENT, notes="Try after 5 pm ✓", now=NOW + timedelta(minutes=2))
    snoozed = ManualAction.from_queued(
        tenant, action_queued(assignee=None, expires_at=T0 + timedelta(days=2)), 1)
    snoozed.snooze(None, NOW + timedelta(days=1), NOW, reason="Customer asked for tomorrow")
    skipped = ManualAction.from_queued(tenant, action_queued(assignee=AGENT), 1)
    skipped.skip(None, "opted out of SMS", NOW)
    return [plain, reserved, call, snoozed, skipped]


def test_the_page_json_is_what_pydantic_makes_of_the_response_model() -> None:
    actions = _actions_in_every_shape("tenant-a")
    sort = Sort.parse("-priority")
    cursor = Cursor.after(sort, ActionSummary.of(actions[-1]))
    counts = ListCounts(total=5, by_type={ActionType.SMS: 4, ActionType.CALL: 1},
                        by_status={ActionStatus.QUEUED: 1, ActionStatus.COMPLETED: 1})
    for next_cursor, tally in ((None, None), (cursor, counts)):
        ours = _page_json([ActionSummary.of(a) for a in actions], next_cursor, tally)
        expected = ActionPage(items=[ActionView.of(a) for a in actions],
                              next_cursor=_encode_cursor(next_cursor) if next_cursor else None, counts=tally)
        assert ours.decode() == expected.model_dump_json(by_alias=True)


def test_a_summary_carries_every_field_of_the_list_view_and_the_sort_values() -> None:
    assert set(ActionSummary.__dataclass_fields__) == set(ActionView.model_fields)
    (action,) = _actions_in_every_shape("tenant-a")[1:2]
    for sort in ("priority", "-priority", "due_at", "-queued_at"):
        assert Sort.parse(sort).values(ActionSummary.of(action)) == Sort.parse(sort).values(action)


async def test_the_repository_lists_summaries_equal_to_the_stored_actions(aq: Harness) -> None:
    tenant = await aq.new_tenant()
    actions = _actions_in_every_shape(tenant)
    async with aq.service.uow() as uow:
        for action in actions:
            assert await uow.actions.add_if_absent(action)
        await uow.commit()
    sort = Sort.parse("queued_at")
    async with aq.service.uow.reading()() as uow:
        listed = await uow.actions.list(tenant, ActionFilter(statuses=tuple(ActionStatus)), limit=50,
                                        after=None, sort=sort)
        stored = [await uow.actions.get(tenant, a.id) for a in actions]
    expected = sorted((ActionSummary.of(a) for a in stored if a is not None), key=lambda s: sort.values(s))
    assert len(expected) == len(actions)
    assert list(listed) == expected
    # and through the API's serialisation, as pydantic would have shown the stored actions
    page = json.loads(_page_json(listed, None, None))
    assert page["items"] == [json.loads(ActionView.of(a).model_dump_json(by_alias=True))
                             for a in sorted((a for a in stored if a is not None), key=sort.values)]
