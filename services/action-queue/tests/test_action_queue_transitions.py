"""Unit tests of the transitions added with the full lifecycle stream (decision 0012): each one is
an event, advances ``version`` by one, and ``rebuild`` folding the events gives the same action."""

from __future__ import annotations

import copy
import uuid
from datetime import timedelta
from typing import Any

import pytest
from aq_factories import T0, action_queued, wrap

from action_queue.domain import (
    DEFAULT_LEASE,
    ActionStatus,
    InvalidField,
    InvalidTransition,
    ManualAction,
    ReservedByAnother,
)
from action_queue.domain.model import MAX_SMS_ATTEMPTS
from action_queue.domain.rebuild import RebuildGap, rebuild
from manual_actions.contracts import ActionType, Envelope, Payload
from manual_actions.contracts.messages import (
    ActionExpired,
    ActionFailed,
    ActionReassigned,
    ActionReleased,
    ActionRequeued,
    ActionReserved,
    ActionScheduled,
    ActionSkipped,
    ActionSnoozed,
)

AGENT = uuid.uuid4()
OTHER = uuid.uuid4()
MANAGER = uuid.uuid4()
NOW = T0 + timedelta(hours=1)
TENANT = "acme"


class Story:
    """An action plus the envelopes its transitions published, as they would be on the topic."""

    def __init__(self, action_type: ActionType = ActionType.SMS) -> None:
        queued = action_queued(action_type=action_type, assignee=AGENT)
        self.action = ManualAction.from_queued(TENANT, queued, sequence=1)
        self.envelopes: list[Envelope[Any]] = [wrap(queued, tenant=TENANT, subject=queued.action_id)]

    def do(self, *published: Payload | None) -> Payload:
        events = [p for p in published if p is not None and p.kind == "event"]
        assert len(events) == 1
        # the transition already applied its event, so the action's version is the event's sequence
        self.envelopes.append(wrap(events[0], tenant=TENANT, subject=self.action.id,
                                   sequence=self.action.version, source="action-queue"))
        return events[0]

    def rebuilt(self) -> ManualAction:
        return rebuild(self.envelopes)[self.action.id]


def test_release_given_back_and_lease_lapse() -> None:
    story = Story()
    story.do(story.action.reserve(AGENT, NOW))
    with pytest.raises(ReservedByAnother):
        story.action.release(OTHER, NOW)
    with pytest.raises(InvalidTransition):
        story.action.lapse(NOW)
    released = story.do(story.action.release(AGENT, NOW))
    assert isinstance(released, ActionReleased) and released.reason == "given_back"
    assert (story.action.status, story.action.reserved_by) == (ActionStatus.QUEUED, None)
    assert story.action.version == 3
    story.do(story.action.reserve(AGENT, NOW))
    lapsed = story.do(story.action.lapse(NOW + DEFAULT_LEASE))
    assert isinstance(lapsed, ActionReleased)
    assert (lapsed.reason, lapsed.released_by) == ("lease_lapsed", None)
    assert story.rebuilt() == story.action


def test_renew_extends_only_the_holders_lease() -> None:
    story = Story()
    story.do(story.action.reserve(AGENT, NOW))
    with pytest.raises(ReservedByAnother):
        story.action.renew_lease(OTHER, NOW)
    later = NOW + timedelta(minutes=4)
    renewed = story.do(story.action.renew_lease(AGENT, later))
    assert isinstance(renewed, ActionReserved) and renewed.renewed
    assert story.action.lease_expires_at == later + DEFAULT_LEASE
    assert story.rebuilt() == story.action


def test_snooze_hides_the_action_until_its_time_then_wakes() -> None:
    story = Story()
    with pytest.raises(InvalidField) as caught:
        story.action.snooze(AGENT, NOW - timedelta(minutes=1), NOW)
    assert caught.value.field == "until"
    until = NOW + timedelta(hours=2)
    snoozed = story.do(story.action.snooze(AGENT, until, NOW, reason="call back after lunch"))
    assert isinstance(snoozed, ActionSnoozed) and snoozed.until == until
    assert story.action.status is ActionStatus.SNOOZED
    assert not story.action.is_reservable(until - timedelta(seconds=1))
    assert story.action.is_reservable(until)
    with pytest.raises(InvalidTransition):
        story.action.wake(NOW)
    woke = story.do(story.action.wake(until))
    assert isinstance(woke, ActionRequeued) and woke.reason == "snooze ended"
    assert (story.action.status, story.action.snoozed_until) == (ActionStatus.QUEUED, None)
    assert story.rebuilt() == story.action


def test_schedule_then_cancel_then_schedule_and_send_when_due() -> None:
    story = Story()
    send_at = NOW + timedelta(hours=3)
    scheduled = story.do(story.action.schedule_sms(AGENT, send_at, "Europe/Paris", NOW, body="See you at 9"))
    assert isinstance(scheduled, ActionScheduled) and scheduled.body == "See you at 9"
    assert (story.action.status, story.action.send_at, story.action.message) == (
        ActionStatus.SCHEDULED, send_at, "See you at 9")
    with pytest.raises(InvalidTransition):  # not due yet, and not workable by hand while scheduled
        story.action.send_sms(AGENT, uuid.uuid4(), now=NOW)
    story.do(story.action.cancel_schedule(AGENT, NOW))
    assert (story.action.status, story.action.send_at) == (ActionStatus.QUEUED, None)
    story.do(story.action.schedule_sms(AGENT, send_at, "Europe/Paris", NOW))
    assert story.action.sms_due(send_at)
    event, command = story.action.send_sms(AGENT, uuid.uuid4(), now=send_at)
    story.do(event, command)
    assert (story.action.status, command.body) == (ActionStatus.SENDING, "See you at 9")
    assert story.rebuilt() == story.action


def test_schedule_in_the_past_is_refused_naming_send_at() -> None:
    with pytest.raises(InvalidField) as caught:
        Story().action.schedule_sms(AGENT, NOW, "UTC", NOW)
    assert caught.value.field == "send_at"


def test_skip_needs_a_reason_and_ends_the_action() -> None:
    story = Story()
    with pytest.raises(InvalidField):
        story.action.skip(AGENT, "  ", NOW)
    skipped = story.do(story.action.skip(AGENT, "wrong number", NOW))
    assert isinstance(skipped, ActionSkipped)
    assert (skipped.reason, skipped.skipped_by) == ("wrong number", AGENT)
    assert (story.action.status, story.action.status_reason) == (ActionStatus.SKIPPED, "wrong number")
    assert story.action.is_terminal
    with pytest.raises(InvalidTransition):
        story.action.reserve(AGENT, NOW)
    assert story.rebuilt() == story.action


def test_reassign_drops_the_reservation_and_is_a_no_op_to_the_same_person() -> None:
    story = Story()
    story.do(story.action.reserve(AGENT, NOW))
    moved = story.do(story.action.reassign(MANAGER, OTHER, NOW, reason="out of office"))
    assert isinstance(moved, ActionReassigned)
    assert (moved.previous_assignee_user_id, moved.assignee_user_id) == (AGENT, OTHER)
    assert (story.action.status, story.action.reserved_by, story.action.assignee_user_id) == (
        ActionStatus.QUEUED, None, OTHER)
    assert story.action.reassign(MANAGER, OTHER, NOW) is None
    assert story.rebuilt() == story.action


def test_reassign_and_skip_are_refused_while_a_call_is_under_way() -> None:
    action = Story(ActionType.CALL).action
    action.place_call(AGENT, uuid.uuid4(), agent_phone="+14155550199", now=NOW)
    with pytest.raises(InvalidTransition):
        action.reassign(MANAGER, OTHER, NOW)
    with pytest.raises(InvalidTransition):
        action.skip(AGENT, "no time", NOW)


def test_expire_ends_an_idle_action() -> None:
    story = Story()
    story.do(story.action.snooze(AGENT, NOW + timedelta(days=2), NOW))
    expired = story.do(story.action.expire(NOW + timedelta(days=1)))
    assert isinstance(expired, ActionExpired)
    assert (story.action.status, story.action.snoozed_until) == (ActionStatus.EXPIRED, None)
    assert story.rebuilt() == story.action


def test_sms_fails_for_good_after_the_last_attempt() -> None:
    story = Story()
    for attempt in range(1, MAX_SMS_ATTEMPTS + 1):
        event, command = story.action.send_sms(AGENT, uuid.uuid4(), now=NOW)
        story.do(event, command)
        result = story.do(story.action.sms_failed(command.command_id, "carrier unreachable", NOW))
        expected = ActionFailed if attempt == MAX_SMS_ATTEMPTS else ActionRequeued
        assert isinstance(result, expected), attempt
    assert (story.action.status, story.action.last_error) == (ActionStatus.FAILED, "carrier unreachable")
    assert story.rebuilt() == story.action


def test_rebuild_ignores_duplicates_and_other_tenants_and_reports_gaps() -> None:
    story = Story()
    story.do(story.action.reserve(AGENT, NOW))
    story.do(story.action.snooze(AGENT, NOW + timedelta(hours=1), NOW))
    duplicated = [story.envelopes[0], *story.envelopes, story.envelopes[1]]
    assert rebuild(duplicated) == {story.action.id: story.action}
    foreign = copy.deepcopy(story.envelopes)
    assert rebuild(foreign, tenant="globex") == {}
    with pytest.raises(RebuildGap):
        rebuild([story.envelopes[0], story.envelopes[2]])
    with pytest.raises(RebuildGap):
        rebuild(story.envelopes[1:])
