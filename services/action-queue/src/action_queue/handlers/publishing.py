"""How an action's outgoing messages are addressed: topic, envelope, sequence."""

from __future__ import annotations

import uuid

from action_queue import metrics
from action_queue.domain import ManualAction
from action_queue.handlers.ports import UnitOfWork
from manual_actions.contracts import (
    ActionCompleted,
    ActionDeleted,
    Envelope,
    Payload,
    PlaceCall,
    SendSms,
)
from manual_actions.contracts.topics import ACTION_LIFECYCLE, CALL_COMMANDS, SMS_COMMANDS

SOURCE = "action-queue"

TOPICS: dict[type[Payload], str] = {
    ActionCompleted: ACTION_LIFECYCLE,
    ActionDeleted: ACTION_LIFECYCLE,
    SendSms: SMS_COMMANDS,
    PlaceCall: CALL_COMMANDS,
}


def envelope_for(action: ManualAction, payload: Payload,
                 causation_id: uuid.UUID | None = None) -> Envelope[Payload]:
    """Wrap ``payload``, returned by one of ``action``'s transitions, for publication.

    Subject is the action id (so one action's messages keep their order). Lifecycle events carry
    the action's ``version`` (already advanced by the transition, i.e. the stored version + 1);
    commands carry ``command_sequence``, their own per-action counter.
    """
    sequence = action.command_sequence if payload.kind == "command" else action.version
    return Envelope.wrap(payload, source=SOURCE, tenant=action.tenant, subject=str(action.id),
                         sequence=sequence, causation_id=causation_id)


async def publish(uow: UnitOfWork, action: ManualAction, payload: Payload,
                  causation_id: uuid.UUID | None = None) -> Envelope[Payload]:
    """Stage ``payload`` in the unit of work's outbox on its topic."""
    envelope = envelope_for(action, payload, causation_id)
    await uow.publish(TOPICS[type(payload)], envelope)
    counter = metrics.COMMANDS_ISSUED if payload.kind == "command" else metrics.LIFECYCLE_EVENTS
    counter.labels(type=payload.message_type).inc()
    return envelope
