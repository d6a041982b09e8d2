"""Use cases started by consumed messages: materialise ActionQueued, apply SMS and call results.

A whole batch is applied in one unit of work (one transaction) for throughput: each message is
recorded in the inbox first, so a redelivered message has no second effect. Any exception
rolls the batch back; the consumer then retries message by message and dead-letters the one that
raises ``UnprocessableMessage``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from action_queue import metrics
from action_queue.domain import DomainError, ManualAction, StaleResult
from action_queue.domain.checks import ContactState
from action_queue.handlers.ports import NewAction, UnitOfWork
from action_queue.handlers.publishing import SOURCE, publish
from manual_actions.contracts import (
    ActionQueued,
    ActionType,
    CallCompleted,
    Envelope,
    Payload,
    SmsFailed,
    SmsSent,
)
from manual_actions.contracts.messages import ContactUpdated

log = logging.getLogger(__name__)

CONSUMER = "action-queue"


class UnprocessableMessage(DomainError):
    """A well-formed message that can never be applied (e.g. a result for an action unknown to its
    tenant); the consumer dead-letters it with this reason."""


async def apply_batch(uow: UnitOfWork, envelopes: Iterable[Envelope[Any]]) -> None:
    """Apply ``envelopes`` in one transaction; commit only if all were applied.

    The ActionQueued events of the batch are materialised first, together, in a few statements
    (``materialise_queued``); the other messages follow one by one in their order. That order is
    safe: ActionQueued is sequence 1 of its action, so every other message about an action comes
    after it, and the other messages keep their relative order.
    """
    envelopes = list(envelopes)
    queued = [e for e in envelopes if isinstance(e.data, ActionQueued)]
    async with uow:
        if queued:
            await materialise_queued(uow, queued)
            envelopes = [e for e in envelopes if not isinstance(e.data, ActionQueued)]
        for envelope in envelopes:
            await apply(uow, envelope)
        await uow.commit()


async def materialise_queued(uow: UnitOfWork, envelopes: Sequence[Envelope[ActionQueued]]) -> None:
    """Materialise each ActionQueued inside the caller's unit of work: one insert of the actions not
    stored yet, and one lookup only if some already existed, whose tenant must be the envelope's.

    No inbox row: the action id is the idempotency key. A redelivered ActionQueued, or a second one
    for the same action (a producer retry with a new envelope id), finds its action stored and
    changes nothing, whatever happened to the action since: its sequence cannot exceed the
    stored version.
    """
    first: dict[uuid.UUID, Envelope[ActionQueued]] = {}
    for envelope in envelopes:
        first.setdefault(envelope.data.action_id, envelope)
    inserted = await uow.actions.add_queued_if_absent(
        [NewAction(e.tenant, e.data, e.sequence) for e in first.values()])
    if inserted:
        metrics.EVENTS_APPLIED.labels(type=ActionQueued.message_type).inc(len(inserted))
    if len(inserted) == len(first) == len(envelopes):
        # The common case, every envelope a new action: no duplicate to look for (and no UUID
        # hashed twice more per envelope to find none).
        return
    duplicates = [e for e in envelopes
                  if e.data.action_id not in inserted or first[e.data.action_id] is not e]
    if not duplicates:
        return
    owners = await uow.actions.tenants_of([e.data.action_id for e in duplicates])
    for envelope in duplicates:
        if owners.get(envelope.data.action_id) != envelope.tenant:
            raise UnprocessableMessage(f"action {envelope.data.action_id} already belongs to another tenant")
        metrics.EVENTS_IGNORED.labels(type=envelope.type, reason="duplicate_action").inc()


async def apply(uow: UnitOfWork, envelope: Envelope[Any]) -> None:
    """Apply one message inside the caller's unit of work (no commit)."""
    own = envelope.source == SOURCE and envelope.data.kind == "event"
    if own and not isinstance(envelope.data, ActionQueued):
        # We read our own lifecycle events back from action-lifecycle; the state is already ours.
        metrics.EVENTS_IGNORED.labels(type=envelope.type, reason="own_event").inc()
        return
    handler = HANDLERS.get(type(envelope.data))
    if handler is None:
        raise UnprocessableMessage(
            f"action-queue does not accept {envelope.type} from {envelope.source}: it is the only "
            "writer of an action's transitions after ActionQueued")
    if handler is not on_action_queued and not await uow.first_time_seen(CONSUMER, envelope.id):
        metrics.EVENTS_IGNORED.labels(type=envelope.type, reason="redelivered").inc()
        return
    await handler(uow, envelope)


async def on_action_queued(uow: UnitOfWork, envelope: Envelope[ActionQueued]) -> None:
    """Materialise the action (see ``materialise_queued``)."""
    await materialise_queued(uow, [envelope])


async def _load_for_result(uow: UnitOfWork, envelope: Envelope[Any]) -> ManualAction:
    action_id = envelope.data.action_id
    action = await uow.actions.get(envelope.tenant, action_id, for_update=True)
    if action is None:
        raise UnprocessableMessage(
            f"{envelope.type} for unknown action {action_id} of tenant {envelope.tenant}")
    return action


def _stale(envelope: Envelope[Any], exc: StaleResult) -> None:
    log.warning("ignored stale result", extra={"message_type": envelope.type, "message_id": str(envelope.id),
                                               "tenant": envelope.tenant, "reason": exc.detail})
    metrics.EVENTS_IGNORED.labels(type=envelope.type, reason="stale_result").inc()


async def on_sms_sent(uow: UnitOfWork, envelope: Envelope[SmsSent]) -> None:
    """The SMS went out: complete the action (outcome ``sent``) and publish ActionCompleted."""
    action = await _load_for_result(uow, envelope)
    try:
        event = action.sms_sent(envelope.data.command_id, envelope.data.sent_at)
    except StaleResult as exc:
        _stale(envelope, exc)
        return
    await _save_and_publish(uow, action, event, envelope)


async def _save_and_publish(uow: UnitOfWork, action: ManualAction, event: Payload,
                            envelope: Envelope[Any]) -> None:
    await uow.actions.save(action)
    await publish(uow, action, event, causation_id=envelope.id)
    metrics.EVENTS_APPLIED.labels(type=envelope.type).inc()


async def on_sms_failed(uow: UnitOfWork, envelope: Envelope[SmsFailed]) -> None:
    """The SMS failed: the action is queued again with ``last_error`` = the reason (ActionRequeued), or
    fails for good when Twilio's error code says a retry cannot succeed (ActionFailed)."""
    action = await _load_for_result(uow, envelope)
    try:
        event = action.sms_failed(envelope.data.command_id, envelope.data.reason, envelope.data.failed_at,
                                  error_code=envelope.data.error_code)
    except StaleResult as exc:
        _stale(envelope, exc)
        return
    await _save_and_publish(uow, action, event, envelope)


async def on_call_completed(uow: UnitOfWork, envelope: Envelope[CallCompleted]) -> None:
    """The call ended: keep its status and wait for the person to record the outcome."""
    action = await _load_for_result(uow, envelope)
    try:
        event = action.call_completed(envelope.data.command_id, envelope.data.call_status,
                                      envelope.data.ended_at, duration_seconds=envelope.data.duration_seconds)
    except StaleResult as exc:
        _stale(envelope, exc)
        return
    await _save_and_publish(uow, action, event, envelope)


async def on_contact_updated(uow: UnitOfWork, envelope: Envelope[ContactUpdated]) -> None:
    """Keep the contact's newest state (by envelope sequence) for the checks at the moment of work."""
    data = envelope.data
    state = ContactState(
        phone=data.phone, timezone=data.timezone,
        opted_out=frozenset(t for t, on in ((ActionType.SMS, data.opted_out.sms),
                                            (ActionType.CALL, data.opted_out.call)) if on),
        do_not_disturb=frozenset(t for t, on in ((ActionType.SMS, data.do_not_disturb.sms),
                                                 (ActionType.CALL, data.do_not_disturb.call)) if on),
        deleted=data.deleted, version=envelope.sequence)
    if await uow.contacts.upsert(envelope.tenant, data.contact_id, state):
        metrics.EVENTS_APPLIED.labels(type=envelope.type).inc()
    else:
        metrics.EVENTS_IGNORED.labels(type=envelope.type, reason="older_state").inc()


Handler = Callable[[UnitOfWork, Envelope[Any]], Awaitable[None]]

HANDLERS: dict[type[Any], Handler] = {
    ActionQueued: on_action_queued,
    SmsSent: on_sms_sent,
    SmsFailed: on_sms_failed,
    CallCompleted: on_call_completed,
    ContactUpdated: on_contact_updated,
}
