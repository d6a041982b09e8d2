"""Use cases started by people over HTTP: list, look at, reserve, send, call, complete, delete,
snooze, reschedule, reassign, schedule.

Each runs in one unit of work: the status change and the messages it causes commit together.
Visibility: an agent sees and acts only on actions assigned to them, a manager on those of their
team (the directory's users with the manager's team id), an admin on every action of their
tenant; anything else is reported as not found.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from action_queue import metrics
from action_queue.domain import (
    DEFAULT_LEASE,
    ActionNotFound,
    ActionStatus,
    Actor,
    BlockedAtWork,
    ManualAction,
    NotAllowed,
    require_user,
)
from action_queue.domain.checks import blocked_reason, current_phone
from action_queue.domain.errors import InvalidField
from action_queue.domain.people import OutOfOffice, QueueSettings
from action_queue.handlers.ports import (
    DEFAULT_SORT,
    ActionChanged,
    ActionFilter,
    ActionSummary,
    Cursor,
    Sort,
    UnitOfWork,
)
from action_queue.handlers.publishing import publish
from manual_actions.auth import Role
from manual_actions.contracts import ActionType, Payload
from manual_actions.templates import merge_values, parse_template, render

TIMEZONE_CONTACT = "contact"
TIMEZONE_USER = "user"

# What a list shows when no status filter is given: everything except deleted actions.
DEFAULT_LIST_STATUSES: tuple[ActionStatus, ...] = tuple(
    s for s in ActionStatus if s is not ActionStatus.DELETED)


@dataclass(frozen=True)
class Page:
    items: Sequence[ActionSummary]
    next_cursor: Cursor | None


async def resolve_actor(uow: UnitOfWork, tenant: str, user_id: uuid.UUID | None, role: Role) -> Actor:
    """The actor behind a token: admins supervise the tenant, managers their team (themselves and the
    directory's users with their team id; only themselves while the directory does not know their
    team), agents themselves."""
    if role is Role.ADMIN:
        return Actor(tenant, user_id, supervisor=True)
    if role is not Role.MANAGER:
        return Actor(tenant, user_id, supervisor=False)
    team: set[uuid.UUID] = set()
    if user_id is not None:
        team.add(user_id)
        async with uow:
            me = await uow.users.get(tenant, user_id)
            if me is not None and me.team_id is not None and not me.deleted:
                team.update(m.user_id for m in await uow.users.team(tenant, me.team_id))
    return Actor(tenant, user_id, supervisor=True, team=frozenset(team))


def _scoped(actor: Actor, filters: ActionFilter) -> ActionFilter | None:
    """``filters`` limited to what ``actor`` may see; None when that leaves nothing."""
    if not actor.supervisor:
        own = require_user(actor)
        if filters.assignee_user_id not in (None, own):
            return None
        return replace(filters, assignee_user_id=own)
    if actor.team is not None:
        if filters.assignee_user_id is not None and filters.assignee_user_id not in actor.team:
            return None
        return replace(filters, assignees=tuple(sorted(actor.team)))
    return filters


async def _proposal(uow: UnitOfWork, action: ManualAction) -> str | None:
    """The SMS text to propose: the action's template rendered with the contact's current data (the
    contacts table, from ContactUpdated v2) and the assignee's (users table); the queued text when
    there is no template, the contact was never described with its name, or the result is empty."""
    if action.type is not ActionType.SMS or action.is_terminal or not action.message_template:
        return action.message
    contact = await uow.contacts.get(action.tenant, action.contact.id)
    if contact is None or contact.name is None:
        return action.message
    template = parse_template(action.message_template)
    if template.problems:
        return action.message
    user = await uow.users.get(action.tenant, action.assignee_user_id) if action.assignee_user_id else None
    values = merge_values({"name": contact.name, "phone": contact.phone, "email": contact.email,
                           "custom_fields": contact.custom_fields},
                          {"name": user.name} if user else None)
    text = render(template, values).strip()
    return text or action.message


async def _load(uow: UnitOfWork, actor: Actor, action_id: uuid.UUID, *, for_update: bool) -> ManualAction:
    action = await uow.actions.get(actor.tenant, action_id, for_update=for_update)
    if action is None or not actor.can_access(action):
        raise ActionNotFound(action_id)
    return action


async def get_action(uow: UnitOfWork, actor: Actor, action_id: uuid.UUID) -> ManualAction:
    """The action, with ``proposed_message`` rendered from the contact's current data."""
    async with uow:
        action = await _load(uow, actor, action_id, for_update=False)
        action.proposed_message = await _proposal(uow, action)
        return action


async def list_actions(uow: UnitOfWork, actor: Actor, filters: ActionFilter, *, limit: int,
                       after: Cursor | None = None, sort: Sort = DEFAULT_SORT) -> Page:
    """A page of the tenant's actions in ``sort`` order (default: by (queued_at, id)). Agents'
    lists are limited to their own actions, managers' to their team's (asking for someone else's
    yields an empty page)."""
    scoped = _scoped(actor, filters)
    if scoped is None:
        return Page(items=[], next_cursor=None)
    filters = scoped
    if not filters.statuses:
        filters = replace(filters, statuses=DEFAULT_LIST_STATUSES)
    async with uow:
        rows = list(await uow.actions.list(actor.tenant, filters, limit=limit + 1, after=after, sort=sort))
    more = len(rows) > limit
    items = rows[:limit]
    last = items[-1] if more else None
    return Page(items=items, next_cursor=Cursor.after(sort, last) if last else None)


async def count_actions(uow: UnitOfWork, actor: Actor,
                        filters: ActionFilter) -> dict[tuple[ActionStatus, ActionType], int]:
    """Per (status, type), how many of the actions the actor may see match ``filters`` apart from
    its statuses."""
    scoped = _scoped(actor, filters)
    if scoped is None:
        return {}
    filters = scoped
    async with uow:
        return await uow.actions.counts(actor.tenant, filters)


# How many actions one Let's Start passes over (blocked by a check at the moment of work, or changed
# by someone else while it was being reserved) before answering "empty" (the next call goes on).
MAX_PASSED_OVER_PER_START = 25


async def _blocked(uow: UnitOfWork, action: ManualAction, now: datetime,
                   settings: QueueSettings | None = None) -> tuple[str | None, str | None]:
    """The reason a check at the moment of work blocks ``action`` (None if none), and the number to use.
    Quiet hours are the tenant's (``settings`` when the caller has them already)."""
    contact = await uow.contacts.get(action.tenant, action.contact.id)
    settings = settings or await uow.settings.get(action.tenant)
    return blocked_reason(action, contact, now, settings.quiet_hours), current_phone(action, contact)


async def _skip_blocked(uow: UnitOfWork, action: ManualAction, reason: str, now: datetime) -> None:
    event = action.skip(None, reason, now)
    await uow.actions.save(action)
    await publish(uow, action, event)


async def reserve_next(uow: UnitOfWork, actor: Actor, *, now: datetime,
                       lease: timedelta = DEFAULT_LEASE) -> ManualAction | None:
    """Let's Start: reserve the caller's next action (priority desc, then due time — an action without
    one is due when queued —, then age, then id) for ``lease`` and
    publish ActionReserved. None when nothing is available. Each call reserves a further action; an
    action whose lease lapsed or whose snooze ended is available again. An action a check at the
    moment of work blocks (opt-out, do-not-disturb, invalid number, quiet hours) is skipped with the
    reason on the way, and the next one is taken. A user who is out of office while the tenant holds
    their actions gets nothing until they are back.

    Each candidate is read and changed in a unit of work of its own (one commit each, so ``uow`` may
    be optimistic): one that someone else changed in between (``ActionChanged``: another device
    reserved it, a manager reassigned it, a bulk operation holds it right now) is passed over,
    unchanged by this call."""
    user_id = require_user(actor)
    passed_over = 0
    changed: list[uuid.UUID] = []
    while passed_over < MAX_PASSED_OVER_PER_START:
        async with uow:
            # One statement reads the candidate with the settings, the caller and the contact; the
            # reads below are answered from it.
            action = await uow.actions.next_reservable(actor.tenant, user_id, now, passing_over=changed)
            settings = await uow.settings.get(actor.tenant)
            if settings.out_of_office is OutOfOffice.HOLD:
                me = await uow.users.get(actor.tenant, user_id)
                if me is not None and me.is_out(now, away_counts=settings.away_counts_as_out):
                    metrics.RESERVATIONS.labels(result="held").inc()
                    return None
            if action is None:
                break
            reason, _ = await _blocked(uow, action, now, settings)
            try:
                if reason is None:
                    event = action.reserve(user_id, now, lease)
                    await uow.actions.save(action)
                    await publish(uow, action, event)
                    action.proposed_message = await _proposal(uow, action)
                else:
                    await _skip_blocked(uow, action, reason, now)
                await uow.commit()
            except ActionChanged:
                passed_over += 1
                changed.append(action.id)
                metrics.RESERVATIONS.labels(result="changed").inc()
                continue
            if reason is None:
                metrics.RESERVATIONS.labels(result="reserved").inc()
                return action
            metrics.BLOCKED.labels(type=action.type.value).inc()
            passed_over += 1
    metrics.RESERVATIONS.labels(result="empty").inc()
    return None


Start = Callable[[ManualAction, str | None, UnitOfWork], Awaitable[Sequence[Payload]]]


async def _start_work(uow: UnitOfWork, actor: Actor, action_id: uuid.UUID, kind: ActionType, now: datetime,
                      start: Start) -> ManualAction:
    """Send an SMS or place a call: the checks at the moment of work first. Blocked: the action is
    skipped with the reason (committed) and ``BlockedAtWork`` raised for the caller to see."""
    async with uow:
        action = await _load(uow, actor, action_id, for_update=True)
        action.ensure_workable(kind, actor.user_id, now)
        reason, phone = await _blocked(uow, action, now)
        if reason is not None:
            await _skip_blocked(uow, action, reason, now)
            await uow.commit()
            metrics.BLOCKED.labels(type=action.type.value).inc()
            raise BlockedAtWork(action.id, reason)
        messages = await start(action, phone, uow)
        await uow.actions.save(action)
        for message in messages:
            await publish(uow, action, message)
        await uow.commit()
    return action


Change = Callable[[ManualAction], Sequence[Payload | None]]


async def _change(uow: UnitOfWork, actor: Actor, action_id: uuid.UUID, change: Change) -> ManualAction:
    """Lock the action, run ``change`` (a domain transition returning what it publishes, in order),
    save it and stage its messages, all in one transaction."""
    async with uow:
        action = await _load(uow, actor, action_id, for_update=True)
        messages = [m for m in change(action) if m is not None]
        if messages:
            await uow.actions.save(action)
            for message in messages:
                await publish(uow, action, message)
            await uow.commit()
    return action


def _require_supervisor(actor: Actor, attempted: str) -> None:
    if not actor.supervisor:
        raise NotAllowed(f"only managers and admins may {attempted}")


def require_in_scope(actor: Actor, user_id: uuid.UUID, field: str) -> None:
    """A manager may hand actions only to members of their team."""
    if actor.team is not None and user_id not in actor.team:
        raise InvalidField(field, f"user {user_id} is not in your team")


async def send_sms(uow: UnitOfWork, actor: Actor, action_id: uuid.UUID, *, body: str | None,
                   now: datetime) -> ManualAction:
    """Status ``sending``: ActionSmsRequested and a SendSms command (new command id), in one transaction.
    Without an edited ``body`` the proposed text goes out (the template rendered with the contact's
    current data, else the queued message)."""

    async def start(action: ManualAction, to: str | None, uow: UnitOfWork) -> Sequence[Payload]:
        text = body if body is not None else await _proposal(uow, action)
        return action.send_sms(actor.user_id, uuid.uuid4(), body=text, now=now, to=to)

    return await _start_work(uow, actor, action_id, ActionType.SMS, now, start)


async def place_call(uow: UnitOfWork, actor: Actor, action_id: uuid.UUID, *, agent_phone: str | None,
                     now: datetime) -> ManualAction:
    """Status ``calling``: ActionCallRequested and a PlaceCall command, in one transaction. Without
    ``agent_phone`` the dialer rings the assignee's phone from the directory, else the caller's."""

    async def start(action: ManualAction, to: str | None, uow: UnitOfWork) -> Sequence[Payload]:
        phone = agent_phone
        for user_id in (action.assignee_user_id, actor.user_id):
            if phone or user_id is None:
                continue
            user = await uow.users.get(action.tenant, user_id)
            phone = user.phone if user is not None and not user.deleted else None
        if not phone:
            raise InvalidField("agent_phone", "agent_phone is required: the directory knows no phone for the "
                                              "assignee or for you")
        return action.place_call(actor.user_id, uuid.uuid4(), agent_phone=phone, now=now, to=to)

    return await _start_work(uow, actor, action_id, ActionType.CALL, now, start)


async def complete_action(uow: UnitOfWork, actor: Actor, action_id: uuid.UUID, *, outcome: str,
                          notes: str | None, now: datetime) -> ManualAction:
    """Record a call's outcome (one of the tenant's outcomes): status ``completed`` and
    ActionCompleted on action-lifecycle."""
    async with uow:
        action = await _load(uow, actor, action_id, for_update=True)
        if action.type is ActionType.CALL and action.status in (ActionStatus.CALLING,
                                                                ActionStatus.AWAITING_OUTCOME):
            # Only once the action could take an outcome: a wrong status or type answers 409 first.
            (await uow.settings.get(actor.tenant)).check_outcome(outcome)
        event = action.complete(outcome, actor.user_id, notes=notes, now=now)
        await uow.actions.save(action)
        await publish(uow, action, event)
        await uow.commit()
    return action


async def delete_action(uow: UnitOfWork, actor: Actor, action_id: uuid.UUID, *, reason: str | None,
                        now: datetime) -> ManualAction:
    """The trash icon: status ``deleted`` and ActionDeleted on action-lifecycle. Allowed to the
    assignee and to supervisors (``_load`` hides the action from anyone else)."""
    return await _change(uow, actor, action_id, lambda a: [a.delete(actor.user_id, reason=reason, now=now)])


async def renew_lease(uow: UnitOfWork, actor: Actor, action_id: uuid.UUID, *, now: datetime,
                      lease: timedelta = DEFAULT_LEASE) -> ManualAction:
    """Extend the caller's reservation (ActionReserved with ``renewed``)."""
    # require_user inside the change: an action the caller may not see answers 404 first
    return await _change(uow, actor, action_id, lambda a: [a.renew_lease(require_user(actor), now, lease)])


async def release(uow: UnitOfWork, actor: Actor, action_id: uuid.UUID, *, now: datetime) -> ManualAction:
    """Give a reservation back (the holder; supervisors may release anyone's)."""
    return await _change(uow, actor, action_id,
                         lambda a: [a.release(actor.user_id, now, supervisor=actor.supervisor)])


async def skip(uow: UnitOfWork, actor: Actor, action_id: uuid.UUID, *, reason: str,
               now: datetime) -> ManualAction:
    """The person will not work this action; ActionSkipped with their reason."""
    return await _change(uow, actor, action_id, lambda a: [a.skip(require_user(actor), reason, now)])


async def snooze(uow: UnitOfWork, actor: Actor, action_id: uuid.UUID, *, until: datetime,
                 reason: str | None, now: datetime) -> ManualAction:
    return await _change(uow, actor, action_id,
                         lambda a: [a.snooze(actor.user_id, until, now, reason=reason)])


async def reschedule(uow: UnitOfWork, actor: Actor, action_id: uuid.UUID, *, due_at: datetime | None,
                     reason: str | None, now: datetime) -> ManualAction:
    """Change the action's due time (None: as soon as possible); ActionRescheduled with the next
    sequence, nothing when the due time is that already. Agents on their own actions, managers on
    their team's, admins on the tenant's (``_load`` answers 404 otherwise)."""
    return await _change(uow, actor, action_id,
                         lambda a: [a.reschedule(due_at, actor.user_id, reason, now)])


async def reassign(uow: UnitOfWork, actor: Actor, action_id: uuid.UUID, *, to: uuid.UUID,
                   reason: str | None, now: datetime) -> ManualAction:
    """Managers and admins move an action to another person's queue (managers within their team)."""
    _require_supervisor(actor, "reassign actions")
    require_in_scope(actor, to, "assignee_user_id")
    return await _change(uow, actor, action_id,
                         lambda a: [a.reassign(actor.user_id, to, now, reason=reason)])


async def schedule_sms(uow: UnitOfWork, actor: Actor, action_id: uuid.UUID, *, send_at: datetime,
                       timezone_name: str | None, body: str | None, now: datetime) -> ManualAction:
    """Schedule the SMS. ``send_at`` without an offset is wall time in ``timezone_name``: an IANA
    name, ``"contact"`` (the contact's time zone; 422 when unknown), ``"user"`` (the time zone of the
    person scheduling, from the directory; 422 when unknown), or None: the contact's time zone when
    workflow-runner told us one, else UTC. Without an edited ``body`` the proposed text is kept."""
    async with uow:
        action = await _load(uow, actor, action_id, for_update=True)
        if timezone_name in (None, TIMEZONE_CONTACT):
            contact = await uow.contacts.get(action.tenant, action.contact.id)
            known = contact.timezone if contact is not None and contact.timezone else None
            if known is None and timezone_name == TIMEZONE_CONTACT:
                raise InvalidField("timezone", "the contact's time zone is not known; name one")
            timezone_name = known or "UTC"
        elif timezone_name == TIMEZONE_USER:
            me = await uow.users.get(actor.tenant, actor.user_id) if actor.user_id else None
            if me is None or not me.timezone or not _known_zone(me.timezone):
                raise InvalidField("timezone", "your time zone is not known; name one")
            timezone_name = me.timezone
        if body is None:
            body = await _proposal(uow, action)
        if send_at.tzinfo is None:
            send_at = send_at.replace(tzinfo=ZoneInfo(timezone_name))
        event = action.schedule_sms(actor.user_id, send_at, timezone_name, now, body=body)
        await uow.actions.save(action)
        await publish(uow, action, event)
        await uow.commit()
    return action


def _known_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


async def cancel_schedule(uow: UnitOfWork, actor: Actor, action_id: uuid.UUID, *,
                          now: datetime) -> ManualAction:
    return await _change(uow, actor, action_id, lambda a: [a.cancel_schedule(actor.user_id, now)])
