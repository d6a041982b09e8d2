"""How an action's outgoing messages are addressed: topic, envelope, sequence."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable

from action_queue import metrics
from action_queue.domain import ManualAction
from action_queue.handlers.ports import UnitOfWork
from manual_actions.contracts import Envelope, Payload, PlaceCall, SendSms
from manual_actions.contracts.topics import ACTION_LIFECYCLE, CALL_COMMANDS, SMS_COMMANDS

SOURCE = "action-queue"

# Commands go to the Twilio-facing services; every event of ours is a lifecycle event.
COMMAND_TOPICS: dict[type[Payload], str] = {
    SendSms: SMS_COMMANDS,
    PlaceCall: CALL_COMMANDS,
}


def topic_of(payload: Payload) -> str:
    return COMMAND_TOPICS[type(payload)] if payload.kind == "command" else ACTION_LIFECYCLE


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
    """Stage ``payload`` in the unit of work's outbox on its topic. Publish each lifecycle event right
    after the transition that returned it, before the next one, so it carries its own sequence."""
    envelope = envelope_for(action, payload, causation_id)
    await uow.publish(topic_of(payload), envelope)
    counter = metrics.COMMANDS_ISSUED if payload.kind == "command" else metrics.LIFECYCLE_EVENTS
    uow.on_commit(counter.labels(type=payload.message_type).inc)  # counted only if it is published
    return envelope


def count_lifecycle_events_on_commit(uow: UnitOfWork, events: Iterable[Payload]) -> None:
    """Count ``events`` (staged with ``publish_many``) in ``LIFECYCLE_EVENTS`` once ``uow`` commits."""
    by_type = Counter(event.message_type for event in events)

    def count() -> None:
        for message_type, n in by_type.items():
            metrics.LIFECYCLE_EVENTS.labels(type=message_type).inc(n)

    if by_type:
        uow.on_commit(count)
