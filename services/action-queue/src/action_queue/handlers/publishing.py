"""How an action's outgoing messages are addressed: topic, envelope, sequence."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence

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
    _count_on_commit(uow, [payload])
    return envelope


async def publish_all(uow: UnitOfWork, messages: Sequence[tuple[str, Envelope[Payload]]]) -> None:
    """``publish`` for many envelopes made with ``envelope_for`` (each right after its transition),
    staged in one round trip, in order."""
    await uow.publish_many(messages)
    _count_on_commit(uow, [envelope.data for _, envelope in messages])


def _count_on_commit(uow: UnitOfWork, payloads: Sequence[Payload]) -> None:
    """Count ``payloads`` as issued commands or published lifecycle events once ``uow`` commits (a
    rolled-back change, or a lost Let's Start race, counts nothing)."""
    by_kind = Counter((payload.kind == "command", payload.message_type) for payload in payloads)

    def count() -> None:
        for (command, message_type), n in by_kind.items():
            counter = metrics.COMMANDS_ISSUED if command else metrics.LIFECYCLE_EVENTS
            counter.labels(type=message_type).inc(n)

    if by_kind:
        uow.on_commit(count)
