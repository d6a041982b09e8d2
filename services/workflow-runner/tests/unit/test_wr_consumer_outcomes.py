"""ActionSkipped/ActionExpired/ActionFailed (no enrollment id on them) continue the enrollment that
waits on the action, found by action id; SmsReceived becomes a reply command."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from wr_factories import TENANT, sms
from wr_fakes import FakeUnitOfWork

from manual_actions.contracts import ActionType, Envelope, topics
from manual_actions.contracts.messages import ActionExpired, ActionFailed, ActionSkipped, SmsReceived
from manual_actions.kafka import Delivered
from workflow_runner.domain.enrollments import ActionStatus, EnrollmentStatus
from workflow_runner.domain.runner import FinishKind
from workflow_runner.entrypoints.consumer import batch_handler, to_command, to_reply
from workflow_runner.handlers import handlers
from workflow_runner.handlers.commands import CreateContact, CreateWorkflow, Enroll, PublishWorkflow

NOW = datetime(2025, 1, 6, tzinfo=UTC)


def _ended(kind: str, action_id: uuid.UUID) -> Envelope[Any]:
    common: dict[str, Any] = {"action_id": action_id, "action_type": ActionType.SMS, "assignee_user_id": None}
    payload: Any
    if kind == "skipped":
        payload = ActionSkipped(**common, reason="opted out", skipped_by=None, skipped_at=NOW)
    elif kind == "expired":
        payload = ActionExpired(**common, expired_at=NOW)
    else:
        payload = ActionFailed(**common, reason="undeliverable", error_code=30003, failed_at=NOW)
    return Envelope.wrap(payload, source="action-queue", tenant=TENANT, subject=str(action_id), sequence=4)


@pytest.mark.parametrize("kind", ["skipped", "expired", "failed"])
async def test_terminal_events_without_enrollment_id_follow_their_branch(kind: str) -> None:
    uow = FakeUnitOfWork()
    grace = await handlers.create_contact(uow, CreateContact(TENANT, "Grace Hopper", "+14155550132"))
    steps = [
        sms("s1"),
        {"id": "route", "type": "branch", "on": {kind: "after", "default": "end"}},
        sms("after"),
    ]
    workflow = await handlers.create_workflow(uow, CreateWorkflow(TENANT, "W", steps))
    await handlers.publish_workflow(uow, PublishWorkflow(TENANT, workflow.id))
    enrollment = await handlers.enroll(uow, Enroll(TENANT, workflow.id, grace.id))
    assert enrollment.waiting_action_id is not None

    event = _ended(kind, enrollment.waiting_action_id)
    command = to_command(Delivered(envelope=event, topic=topics.ACTION_LIFECYCLE, partition=0, offset=1))
    assert command is not None and command.kind is FinishKind(kind) and command.enrollment_id is None
    await batch_handler(lambda: uow)(
        [Delivered(envelope=event, topic=topics.ACTION_LIFECYCLE, partition=0, offset=1)]
    )

    stored = await handlers.get_enrollment(uow, TENANT, enrollment.id)
    assert (stored.status, stored.current_step_id, stored.last_outcome) == (
        EnrollmentStatus.WAITING,
        "after",
        kind,
    )
    async with uow:
        first = await uow.actions.get(TENANT, enrollment.waiting_action_id)
    assert first is not None and first.status is ActionStatus(kind)


def test_sms_received_becomes_a_reply_command() -> None:
    envelope = Envelope.wrap(
        SmsReceived(
            message_sid="SM" + "a" * 32,
            from_phone="+14155550132",
            to_phone="+15005550006",
            body="STOP",
            keyword="opt_out",
            received_at=NOW,
        ),
        source="sms-sender",
        tenant=TENANT,
        subject="+14155550132",
        sequence=1,
    )
    reply = to_reply(Delivered(envelope=envelope, topic=topics.SMS_INBOUND, partition=0, offset=0))
    assert reply is not None
    assert (reply.tenant, reply.from_phone, reply.keyword, reply.message_id) == (
        TENANT,
        "+14155550132",
        "opt_out",
        envelope.id,
    )
    assert to_command(Delivered(envelope=envelope, topic=topics.SMS_INBOUND, partition=0, offset=0)) is None


def test_the_consumer_passes_over_exactly_the_types_it_would_ignore() -> None:
    """HANDLED_TYPES (what the consumer decodes) must cover every type to_command/to_reply act on,
    and nothing else: checked with the registry's example of every message type."""
    import json

    from manual_actions.contracts import decode, registry
    from workflow_runner.entrypoints.consumer import HANDLED_TYPES

    acted_on: set[str] = set()
    for message_type, version in registry.message_types():
        for document in registry.examples_for(message_type, version).values():
            delivered = Delivered(decode(json.dumps(document).encode()), topics.ACTION_LIFECYCLE, 0, 0)
            if to_command(delivered) is not None or to_reply(delivered) is not None:
                acted_on.add(message_type)
    assert acted_on == HANDLED_TYPES
