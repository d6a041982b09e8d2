"""Builders of ActionQueued events and envelopes for the action-queue tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from manual_actions.contracts import ActionQueued, ActionType, ContactSnapshot, Envelope

T0 = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)


def action_queued(
    *,
    action_id: uuid.UUID | None = None,
    action_type: ActionType = ActionType.SMS,
    assignee: uuid.UUID | None = None,
    phone: str | None = "+14155550100",
    contact_name: str = "Ada Lovelace",
    message: str | None = "Hi Ada, thanks for your interest!",
    priority: int = 0,
    queued_at: datetime = T0,
    workflow_id: uuid.UUID | None = None,
    expires_at: datetime | None = None,
    due_at: datetime | None = None,
    message_template: str | None = None,
    contact_id: uuid.UUID | None = None,
) -> ActionQueued:
    return ActionQueued(
        action_id=action_id or uuid.uuid4(),
        action_type=action_type,
        action_name="Follow up" if action_type is ActionType.SMS else "Call back",
        workflow_id=workflow_id or uuid.uuid4(),
        workflow_version=1,
        workflow_name="Inbound leads",
        step_id="sms1" if action_type is ActionType.SMS else "call1",
        enrollment_id=uuid.uuid4(),
        contact=ContactSnapshot(contact_id=contact_id or uuid.uuid4(), name=contact_name, phone=phone),
        assignee_user_id=assignee,
        message=message if action_type is ActionType.SMS else None,
        priority=priority,
        queued_at=queued_at,
        expires_at=expires_at,
        due_at=due_at,
        message_template=message_template if action_type is ActionType.SMS else None,
    )


def wrap(payload: Any, *, tenant: str, subject: uuid.UUID | str, sequence: int = 1,
         source: str = "workflow-runner", causation_id: uuid.UUID | None = None) -> Envelope[Any]:
    return Envelope.wrap(payload, source=source, tenant=tenant, subject=str(subject), sequence=sequence,
                         causation_id=causation_id)
