"""Use cases started by consumed messages about people and commands: the team directory
(UserUpdated), contacts' current data (ContactUpdated v2) and CancelAction.

They run like ``materialise``: a whole group of messages in one unit of work, each recorded in the
inbox first (a redelivery has no second effect), ``UnprocessableMessage`` for a message that can
never apply (the consumer dead-letters it). The consumer routes these types here and every other
one to ``materialise``.

Out of office: when a UserUpdated says a user is out (out_of_office, or away when the tenant counts
away as out) and the tenant redistributes, each of their *queued* actions (not reserved, snoozed,
scheduled or under way) is reassigned round robin to the available members of the same team, one
ActionReassigned each with the reason. With the "hold" policy nothing moves; Let's Start offers
the user nothing until they are back.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from action_queue import metrics
from action_queue.domain import ActionStatus, ManualAction
from action_queue.domain.checks import ContactState
from action_queue.domain.model import TERMINAL
from action_queue.domain.people import OutOfOffice, UserState
from action_queue.handlers.materialise import CONSUMER, UnprocessableMessage
from action_queue.handlers.ports import ActionFilter, UnitOfWork, UnitOfWorkFactory
from action_queue.handlers.publishing import envelope_for, publish, publish_all, topic_of
from manual_actions.contracts import ActionType, Envelope
from manual_actions.contracts.messages import CancelAction, ContactUpdated, UserUpdated

log = logging.getLogger(__name__)

# CancelAction is deduplicated by its command id as well as by envelope id: a command re-sent
# under a new envelope must still act once.
CANCEL_CONSUMER = "action-queue.cancel-action"
OOO_REASON = "out of office: redistributed to the team"
# Statuses in which a command to cancel finds an SMS or call under way: it has no effect.
UNDER_WAY = frozenset({ActionStatus.SENDING, ActionStatus.CALLING, ActionStatus.AWAITING_OUTCOME})
# How many of a user's queued actions one UserUpdated redistributes (the rest stay theirs).
MAX_REDISTRIBUTED = 10_000

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


async def apply_batch(uow: UnitOfWork, envelopes: Iterable[Envelope[Any]], *, clock: Clock = _utcnow) -> None:
    """Apply ``envelopes`` (all of types in ``HANDLERS``) in order in one transaction."""
    async with uow:
        for envelope in envelopes:
            handler = HANDLERS[type(envelope.data)]
            if not await uow.first_time_seen(CONSUMER, envelope.id):
                metrics.EVENTS_IGNORED.labels(type=envelope.type, reason="redelivered").inc()
                continue
            await handler(uow, envelope, clock())
        await uow.commit()


async def on_contact_updated(uow: UnitOfWork, envelope: Envelope[ContactUpdated], now: datetime) -> None:
    """Keep the contact's newest state (by envelope sequence): the checks at the moment of work use
    it, and SMS templates are rendered again with its name, phone, email and custom fields."""
    data = envelope.data
    state = ContactState(
        phone=data.phone, timezone=data.timezone,
        opted_out=frozenset(t for t, on in ((ActionType.SMS, data.opted_out.sms),
                                            (ActionType.CALL, data.opted_out.call)) if on),
        do_not_disturb=frozenset(t for t, on in ((ActionType.SMS, data.do_not_disturb.sms),
                                                 (ActionType.CALL, data.do_not_disturb.call)) if on),
        deleted=data.deleted, version=envelope.sequence, name=data.name, email=data.email,
        custom_fields=dict(data.custom_fields))
    if await uow.contacts.upsert(envelope.tenant, data.contact_id, state):
        metrics.EVENTS_APPLIED.labels(type=envelope.type).inc()
    else:
        metrics.EVENTS_IGNORED.labels(type=envelope.type, reason="older_state").inc()


async def on_user_updated(uow: UnitOfWork, envelope: Envelope[UserUpdated], now: datetime) -> None:
    """Keep the user's newest state; when they are out and the tenant redistributes, move their
    queued actions round robin to the available members of their team."""
    data = envelope.data
    state = UserState(user_id=data.user_id, name=data.name, role=data.role, team_id=data.team_id,
                      phone=data.phone, timezone=data.timezone, availability=data.availability.status,
                      unavailable_from=data.availability.unavailable_from,
                      unavailable_until=data.availability.unavailable_until, deleted=data.deleted,
                      version=envelope.sequence)
    if not await uow.users.upsert(envelope.tenant, state):
        metrics.EVENTS_IGNORED.labels(type=envelope.type, reason="older_state").inc()
        return
    metrics.EVENTS_APPLIED.labels(type=envelope.type).inc()
    settings = await uow.settings.get(envelope.tenant)
    if settings.out_of_office is OutOfOffice.REDISTRIBUTE and state.is_out(
            now, away_counts=settings.away_counts_as_out):
        await redistribute(uow, envelope.tenant, state, now, away_counts=settings.away_counts_as_out)


async def redistribute(uow: UnitOfWork, tenant: str, user: UserState, now: datetime, *,
                       away_counts: bool) -> int:
    """Reassign ``user``'s queued actions round robin (by user id) to their team's available
    members; returns how many moved. Without a team or an available member nothing moves."""
    if user.team_id is None:
        log.info("out-of-office user has no team; actions stay", extra={"tenant": tenant})
        return 0
    members = [m.user_id for m in await uow.users.team(tenant, user.team_id)
               if m.user_id != user.user_id and not m.is_out(now, away_counts=away_counts)]
    if not members:
        log.info("no available team member; actions of the out-of-office user stay", extra={"tenant": tenant})
        return 0
    filters = ActionFilter(assignee_user_id=user.user_id, statuses=(ActionStatus.QUEUED,))
    ids = await uow.actions.matching_ids(tenant, filters, after=None, limit=MAX_REDISTRIBUTED)
    actions = [a for a in await uow.actions.get_many(tenant, ids) if filters.matches(a)]
    # Queue order, so the most urgent actions are spread first.
    actions.sort(key=ManualAction.queue_key)
    moved: list[ManualAction] = []
    messages = []
    for i, action in enumerate(actions):
        event = action.reassign(None, members[i % len(members)], now, reason=OOO_REASON)
        if event is None:
            continue
        moved.append(action)
        messages.append((topic_of(event), envelope_for(action, event)))
    await uow.actions.save_many(moved)
    await publish_all(uow, messages)
    return len(moved)


async def redistribute_due(uow_factory: UnitOfWorkFactory, now: datetime, *, limit: int = 50) -> int:
    """The periodic side of out of office: users who are out at ``now`` and still have queued
    actions — an absence that began after its UserUpdated arrived, or actions that reached the user
    while out — get them redistributed as on the event, ``limit`` users per transaction. Returns
    how many actions moved."""
    moved = 0
    after: tuple[str, uuid.UUID] | None = None
    while True:
        async with uow_factory() as uow:
            found = await uow.users.out_with_queued(now, limit=limit, after=after)
            for tenant, user in found:
                settings = await uow.settings.get(tenant)
                away = settings.away_counts_as_out
                if settings.out_of_office is OutOfOffice.REDISTRIBUTE and user.is_out(now, away_counts=away):
                    moved += await redistribute(uow, tenant, user, now, away_counts=away)
            await uow.commit()
        if len(found) < limit:
            return moved
        after = (found[-1][0], found[-1][1].user_id)


async def on_cancel_action(uow: UnitOfWork, envelope: Envelope[CancelAction], now: datetime) -> None:
    """Delete the action (ActionDeleted with the command's reason) unless it already finished or an
    SMS or call for it is under way; then nothing changes (logged and counted). Once per command id."""
    command = envelope.data
    if not await uow.first_time_seen(CANCEL_CONSUMER, command.command_id):
        metrics.EVENTS_IGNORED.labels(type=envelope.type, reason="duplicate_command").inc()
        return
    action = await uow.actions.get(envelope.tenant, command.action_id, for_update=True)
    if action is None:
        raise UnprocessableMessage(
            f"CancelAction for unknown action {command.action_id} of tenant {envelope.tenant}")
    if action.enrollment_id != command.enrollment_id:
        raise UnprocessableMessage(f"CancelAction names enrollment {command.enrollment_id}, but action "
                                   f"{action.id} belongs to enrollment {action.enrollment_id}")
    if action.status in TERMINAL or action.status in UNDER_WAY:
        log.info("CancelAction had no effect", extra={
            "tenant": envelope.tenant, "action_id": str(action.id), "action_status": action.status.value,
            "command_id": str(command.command_id)})
        reason = "already_finished" if action.status in TERMINAL else "under_way"
        metrics.EVENTS_IGNORED.labels(type=envelope.type, reason=reason).inc()
        return
    event = action.delete(None, reason=command.reason, now=now)
    await uow.actions.save(action)
    await publish(uow, action, event, causation_id=envelope.id)
    metrics.EVENTS_APPLIED.labels(type=envelope.type).inc()


Handler = Callable[[UnitOfWork, Envelope[Any], datetime], Awaitable[None]]

HANDLERS: dict[type[Any], Handler] = {
    ContactUpdated: on_contact_updated,
    UserUpdated: on_user_updated,
    CancelAction: on_cancel_action,
}


def handles(envelope: Envelope[Any]) -> bool:
    return type(envelope.data) in HANDLERS



