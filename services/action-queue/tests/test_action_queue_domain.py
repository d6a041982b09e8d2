"""Unit tests of the manual action's life cycle: every transition, and every refusal."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import timedelta

import pytest
from aq_factories import T0, action_queued

from action_queue.domain import (
    DEFAULT_LEASE,
    ActionStatus,
    Actor,
    InvalidField,
    InvalidTransition,
    ManualAction,
    NotAllowed,
    ReservedByAnother,
    StaleResult,
    require_user,
)
from manual_actions.contracts import ActionCompleted, ActionDeleted, ActionType, PlaceCall, SendSms
from manual_actions.contracts.messages import (
    ActionCallEnded,
    ActionCallRequested,
    ActionRequeued,
    ActionReserved,
    ActionSmsRequested,
)

AGENT = uuid.uuid4()
OTHER = uuid.uuid4()
NOW = T0 + timedelta(hours=1)


def sms(**kwargs: object) -> ManualAction:
    return ManualAction.from_queued("acme", action_queued(assignee=AGENT, **kwargs), sequence=1)  # type: ignore[arg-type]


def call(**kwargs: object) -> ManualAction:
    return ManualAction.from_queued(
        "acme", action_queued(action_type=ActionType.CALL, assignee=AGENT, **kwargs), sequence=1)  # type: ignore[arg-type]


def in_status(action: ManualAction, status: ActionStatus) -> ManualAction:
    """Drive ``action`` through legal transitions into ``status``."""
    if status is ActionStatus.QUEUED:
        return action
    if status is ActionStatus.RESERVED:
        action.reserve(AGENT, NOW)
        return action
    if status in (ActionStatus.SENDING, ActionStatus.CALLING):
        if action.type is ActionType.SMS:
            action.send_sms(AGENT, uuid.uuid4(), now=NOW)
        else:
            action.place_call(AGENT, uuid.uuid4(), agent_phone="+14155550199", now=NOW)
        assert action.status is status
        return action
    if status is ActionStatus.AWAITING_OUTCOME:
        _, command = action.place_call(AGENT, uuid.uuid4(), agent_phone="+14155550199", now=NOW)
        action.call_completed(command.command_id, "completed", NOW)
        return action
    if status is ActionStatus.COMPLETED:
        if action.type is ActionType.SMS:
            _, command = action.send_sms(AGENT, uuid.uuid4(), now=NOW)
            action.sms_sent(command.command_id, NOW)
        else:
            action.place_call(AGENT, uuid.uuid4(), agent_phone="+14155550199", now=NOW)
            action.complete("connected", AGENT, now=NOW)
        return action
    action.delete(AGENT, now=NOW)
    return action


# --- creation ----------------------------------------------------------------------------------


def test_from_queued_copies_the_event_and_starts_at_its_sequence() -> None:
    event = action_queued(assignee=AGENT, priority=7)
    action = ManualAction.from_queued("acme", event, sequence=1)
    assert action.id == event.action_id
    assert action.tenant == "acme"
    assert action.status is ActionStatus.QUEUED
    assert action.version == 1
    assert action.priority == 7
    assert action.contact.phone == "+14155550100"
    assert action.message == event.message
    assert [(h.from_status, h.to_status) for h in action.history] == [(None, ActionStatus.QUEUED)]


# --- reserve -----------------------------------------------------------------------------------


def test_reserve_takes_a_lease() -> None:
    action = sms()
    event = action.reserve(AGENT, NOW)
    assert isinstance(event, ActionReserved)
    assert (event.reserved_by, event.lease_expires_at, event.renewed) == (AGENT, NOW + DEFAULT_LEASE, False)
    assert action.status is ActionStatus.RESERVED
    assert action.reserved_by == AGENT
    assert action.lease_expires_at == NOW + DEFAULT_LEASE
    assert action.version == 2  # every transition is a lifecycle event


def test_a_live_lease_cannot_be_taken_but_a_lapsed_one_can() -> None:
    action = sms()
    action.reserve(AGENT, NOW)
    with pytest.raises(ReservedByAnother):
        action.reserve(OTHER, NOW + DEFAULT_LEASE - timedelta(seconds=1))
    action.reserve(OTHER, NOW + DEFAULT_LEASE)
    assert action.reserved_by == OTHER


@pytest.mark.parametrize("status", [ActionStatus.SENDING, ActionStatus.COMPLETED, ActionStatus.DELETED])
def test_reserve_is_refused_unless_queued_or_lapsed(status: ActionStatus) -> None:
    action = in_status(sms(), status)
    with pytest.raises(InvalidTransition):
        action.reserve(AGENT, NOW)


# --- send_sms ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [ActionStatus.QUEUED, ActionStatus.RESERVED])
def test_send_sms_issues_a_command_and_moves_to_sending(status: ActionStatus) -> None:
    action = in_status(sms(), status)
    command_id = uuid.uuid4()
    version = action.version
    event, command = action.send_sms(AGENT, command_id, now=NOW)
    assert isinstance(event, ActionSmsRequested)
    assert (event.command_id, event.body, event.requested_by) == (command_id, command.body, AGENT)
    assert isinstance(command, SendSms)
    assert command.command_id == command_id
    assert command.action_id == action.id
    assert command.to == "+14155550100"
    assert command.body == "Hi Ada, thanks for your interest!"
    assert command.requested_by == AGENT
    assert action.status is ActionStatus.SENDING
    assert action.pending_command_id == command_id
    assert action.command_sequence == 1
    assert action.version == version + 1  # the event does; the command has its own counter


def test_send_sms_uses_the_edited_body() -> None:
    action = sms()
    _, command = action.send_sms(AGENT, uuid.uuid4(), body="  Edited text ", now=NOW)
    assert command.body == "Edited text"
    assert action.message == "Edited text"


def test_send_sms_without_contact_phone_names_contact_phone() -> None:
    action = sms(phone=None)
    with pytest.raises(InvalidField) as caught:
        action.send_sms(AGENT, uuid.uuid4(), now=NOW)
    assert caught.value.field == "contact.phone"
    assert action.status is ActionStatus.QUEUED


def test_send_sms_with_an_invalid_contact_phone_names_contact_phone() -> None:
    # The contract only admits E.164 numbers; the domain checks again rather than trust every producer.
    action = sms()
    action.contact = replace(action.contact, phone="555-0100")
    with pytest.raises(InvalidField) as caught:
        action.send_sms(AGENT, uuid.uuid4(), now=NOW)
    assert caught.value.field == "contact.phone"


@pytest.mark.parametrize("body", ["   ", "x" * 1601])
def test_send_sms_refuses_an_empty_or_too_long_body(body: str) -> None:
    with pytest.raises(InvalidField) as caught:
        sms().send_sms(AGENT, uuid.uuid4(), body=body, now=NOW)
    assert caught.value.field == "body"


def test_send_sms_without_any_text_names_body() -> None:
    with pytest.raises(InvalidField) as caught:
        sms(message=None).send_sms(AGENT, uuid.uuid4(), now=NOW)
    assert caught.value.field == "body"


def test_send_sms_is_refused_for_a_call() -> None:
    with pytest.raises(InvalidTransition):
        call().send_sms(AGENT, uuid.uuid4(), now=NOW)


@pytest.mark.parametrize("status", [ActionStatus.SENDING, ActionStatus.COMPLETED, ActionStatus.DELETED])
def test_send_sms_is_refused_once_under_way_or_finished(status: ActionStatus) -> None:
    action = in_status(sms(), status)
    with pytest.raises(InvalidTransition):
        action.send_sms(AGENT, uuid.uuid4(), now=NOW)


def test_send_sms_is_refused_while_someone_else_holds_the_lease() -> None:
    action = sms()
    action.reserve(OTHER, NOW)
    with pytest.raises(ReservedByAnother):
        action.send_sms(AGENT, uuid.uuid4(), now=NOW)


# --- SMS results -------------------------------------------------------------------------------


def test_sms_sent_completes_with_outcome_sent_and_sequence_two() -> None:
    action = sms()
    _, command = action.send_sms(AGENT, uuid.uuid4(), now=NOW)
    event = action.sms_sent(command.command_id, NOW + timedelta(seconds=3))
    assert isinstance(event, ActionCompleted)
    assert event.outcome == "sent"
    assert event.completed_by is None
    assert event.enrollment_id == action.enrollment_id
    assert action.status is ActionStatus.COMPLETED
    assert action.outcome == "sent"
    assert action.completed_at == NOW + timedelta(seconds=3)
    assert action.version == 3  # 1 queued, 2 SMS requested, 3 completed


def test_sms_failed_requeues_with_the_reason() -> None:
    action = sms()
    action.reserve(AGENT, NOW)
    _, command = action.send_sms(AGENT, uuid.uuid4(), now=NOW)
    event = action.sms_failed(command.command_id, "Unreachable destination", NOW, error_code=30003)
    assert isinstance(event, ActionRequeued)
    assert event.last_error == "Unreachable destination"
    assert event.reason == "SMS failed: Unreachable destination"
    assert action.status is ActionStatus.QUEUED
    assert action.last_error == "Unreachable destination"
    assert action.reserved_by is None
    assert action.pending_command_id is None
    assert action.version == 4  # queued, reserved, SMS requested, requeued
    # and it can be sent again, with a new command and the next command sequence
    _, retry = action.send_sms(AGENT, uuid.uuid4(), now=NOW)
    assert action.command_sequence == 2
    assert action.last_error is None
    assert action.sms_sent(retry.command_id, NOW).outcome == "sent"


def test_results_for_another_command_are_stale() -> None:
    action = sms()
    action.send_sms(AGENT, uuid.uuid4(), now=NOW)
    with pytest.raises(StaleResult):
        action.sms_sent(uuid.uuid4(), NOW)
    with pytest.raises(StaleResult):
        action.sms_failed(uuid.uuid4(), "nope", NOW)
    assert action.status is ActionStatus.SENDING


def test_results_after_completion_or_deletion_are_stale() -> None:
    action = sms()
    _, command = action.send_sms(AGENT, uuid.uuid4(), now=NOW)
    action.delete(AGENT, now=NOW)
    with pytest.raises(StaleResult):
        action.sms_sent(command.command_id, NOW)
    assert action.status is ActionStatus.DELETED


# --- calls -------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [ActionStatus.QUEUED, ActionStatus.RESERVED])
def test_place_call_issues_a_command_and_moves_to_calling(status: ActionStatus) -> None:
    action = in_status(call(), status)
    event, command = action.place_call(AGENT, uuid.uuid4(), agent_phone="+14155550199", now=NOW)
    assert isinstance(event, ActionCallRequested)
    assert (event.command_id, event.agent_phone) == (command.command_id, "+14155550199")
    assert isinstance(command, PlaceCall)
    assert command.to == "+14155550100"
    assert command.agent_phone == "+14155550199"
    assert action.status is ActionStatus.CALLING
    assert action.command_sequence == 1


@pytest.mark.parametrize("agent_phone", [None, "", "0123"])
def test_place_call_needs_a_valid_agent_phone(agent_phone: str | None) -> None:
    with pytest.raises(InvalidField) as caught:
        call().place_call(AGENT, uuid.uuid4(), agent_phone=agent_phone, now=NOW)
    assert caught.value.field == "agent_phone"


def test_place_call_without_contact_phone_names_contact_phone() -> None:
    with pytest.raises(InvalidField) as caught:
        call(phone=None).place_call(AGENT, uuid.uuid4(), agent_phone="+14155550199", now=NOW)
    assert caught.value.field == "contact.phone"


def test_place_call_is_refused_for_an_sms() -> None:
    with pytest.raises(InvalidTransition):
        sms().place_call(AGENT, uuid.uuid4(), agent_phone="+14155550199", now=NOW)


@pytest.mark.parametrize("status", [ActionStatus.CALLING, ActionStatus.AWAITING_OUTCOME,
                                    ActionStatus.COMPLETED, ActionStatus.DELETED])
def test_place_call_is_refused_once_under_way_or_finished(status: ActionStatus) -> None:
    action = in_status(call(), status)
    with pytest.raises(InvalidTransition):
        action.place_call(AGENT, uuid.uuid4(), agent_phone="+14155550199", now=NOW)


def test_call_completed_awaits_the_outcome() -> None:
    action = call()
    _, command = action.place_call(AGENT, uuid.uuid4(), agent_phone="+14155550199", now=NOW)
    ended = action.call_completed(command.command_id, "no-answer", NOW, duration_seconds=0)
    assert isinstance(ended, ActionCallEnded)
    assert (ended.command_id, ended.call_status) == (command.command_id, "no-answer")
    assert action.status is ActionStatus.AWAITING_OUTCOME
    assert action.call_status == "no-answer"
    with pytest.raises(StaleResult):  # a redelivered result changes nothing
        action.call_completed(command.command_id, "completed", NOW)
    assert action.call_status == "no-answer"


@pytest.mark.parametrize("status", [ActionStatus.CALLING, ActionStatus.AWAITING_OUTCOME])
def test_complete_records_the_outcome(status: ActionStatus) -> None:
    action = in_status(call(), status)
    version = action.version
    event = action.complete("no_answer", AGENT, notes="try tomorrow", now=NOW)
    assert isinstance(event, ActionCompleted)
    assert event.outcome == "no_answer"
    assert event.notes == "try tomorrow"
    assert event.completed_by == AGENT
    assert action.status is ActionStatus.COMPLETED
    assert action.version == version + 1
    assert action.history[-1].by == AGENT


@pytest.mark.parametrize("status", [ActionStatus.QUEUED, ActionStatus.RESERVED, ActionStatus.COMPLETED,
                                    ActionStatus.DELETED])
def test_complete_is_refused_before_calling_or_when_finished(status: ActionStatus) -> None:
    action = in_status(call(), status)
    with pytest.raises(InvalidTransition):
        action.complete("connected", AGENT, now=NOW)


def test_an_sms_cannot_be_completed_by_hand() -> None:
    action = in_status(sms(), ActionStatus.SENDING)
    with pytest.raises(InvalidTransition):
        action.complete("sent", AGENT, now=NOW)


@pytest.mark.parametrize("outcome", ["", "Connected!", "x" * 65])
def test_complete_refuses_a_malformed_outcome(outcome: str) -> None:
    action = in_status(call(), ActionStatus.AWAITING_OUTCOME)
    with pytest.raises(InvalidField) as caught:
        action.complete(outcome, AGENT, now=NOW)
    assert caught.value.field == "outcome"


# --- delete ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "status"), [
    ("sms", ActionStatus.QUEUED), ("sms", ActionStatus.RESERVED), ("sms", ActionStatus.SENDING),
    ("call", ActionStatus.CALLING), ("call", ActionStatus.AWAITING_OUTCOME),
])
def test_delete_from_any_open_status(kind: str, status: ActionStatus) -> None:
    action = in_status(sms() if kind == "sms" else call(), status)
    version = action.version
    event = action.delete(OTHER, reason="created by mistake", now=NOW)
    assert isinstance(event, ActionDeleted)
    assert event.deleted_by == OTHER
    assert event.reason == "created by mistake"
    assert action.status is ActionStatus.DELETED
    assert action.reserved_by is None
    assert action.version == version + 1


@pytest.mark.parametrize("status", [ActionStatus.COMPLETED, ActionStatus.DELETED])
def test_delete_is_refused_when_finished(status: ActionStatus) -> None:
    action = in_status(sms(), status)
    with pytest.raises(InvalidTransition):
        action.delete(AGENT, now=NOW)


# --- history and actors ------------------------------------------------------------------------


def test_history_records_every_transition() -> None:
    action = sms()
    action.reserve(AGENT, NOW)
    _, command = action.send_sms(AGENT, uuid.uuid4(), now=NOW)
    action.sms_sent(command.command_id, NOW)
    assert [(h.from_status, h.to_status) for h in action.history] == [
        (None, ActionStatus.QUEUED),
        (ActionStatus.QUEUED, ActionStatus.RESERVED),
        (ActionStatus.RESERVED, ActionStatus.SENDING),
        (ActionStatus.SENDING, ActionStatus.COMPLETED),
    ]
    assert [h.by for h in action.history] == [None, AGENT, AGENT, None]


def test_actor_visibility() -> None:
    action = sms()
    assert Actor("acme", AGENT, supervisor=False).can_access(action)
    assert not Actor("acme", OTHER, supervisor=False).can_access(action)
    assert not Actor("acme", None, supervisor=False).can_access(action)
    assert Actor("acme", None, supervisor=True).can_access(action)
    assert not Actor("globex", None, supervisor=True).can_access(action)


def test_require_user_refuses_tokens_without_a_user() -> None:
    assert require_user(Actor("acme", AGENT, supervisor=False)) == AGENT
    with pytest.raises(NotAllowed):
        require_user(Actor("acme", None, supervisor=True))
