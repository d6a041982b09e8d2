"""Bulk reassign, delete, snooze and reschedule over a filter, idempotent by the client's request id.

Managers work on their team's actions only: the filter they submit is limited to their team's
members when recorded, and a reassignment must stay within the team.

``submit`` records the request (or returns the one already recorded under that id) and does no
work itself; ``run_chunk`` — called by the bulk loop — works one chunk of one running request in
one transaction: the matching actions after the request's position, in id order, each changed by
its usual transition (one lifecycle event each), plus the new position. Chunks are short
transactions, so people keep working the queue meanwhile; an action someone holds a live
reservation on, or that cannot take the change (e.g. sending), is counted as unchanged and left
alone. A crash loses nothing and repeats nothing: the position commits with the chunk.

Reschedule sets the due time of the matching open actions to ``until`` (ActionRescheduled, as the
single endpoint does), so they move in the queue order; a scheduled SMS instead goes out at
``until`` (a new ActionScheduled). Actions under way (sending, calling, awaiting an outcome), held
by someone, or already due then are counted as unchanged.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from action_queue import metrics
from action_queue.domain import ActionStatus, Actor, DomainError, InvalidField, ManualAction, NotAllowed
from action_queue.domain.model import TERMINAL
from action_queue.handlers.ports import BulkOperation, BulkRequest, BulkStatus, UnitOfWork
from action_queue.handlers.publishing import envelope_for, publish_all, topic_of
from action_queue.handlers.queue import require_in_scope
from manual_actions.contracts import Envelope, Payload

DEFAULT_CHUNK = 1000
# What a bulk request touches when its filter names no status: every action still open.
OPEN_STATUSES = tuple(s for s in ActionStatus if s not in TERMINAL)


class RequestIdReused(DomainError):
    """The request id names an earlier bulk request that asked for something else (409)."""


async def submit(uow: UnitOfWork, actor: Actor, request: BulkRequest, *,
                 now: datetime) -> tuple[BulkRequest, bool]:
    """Record ``request``; return the stored request and whether it is new. Supervisors only."""
    if not actor.supervisor:
        raise NotAllowed("only managers and admins may change actions in bulk")
    if request.operation is BulkOperation.REASSIGN:
        if request.assignee_user_id is None:
            raise InvalidField("assignee_user_id", "assignee_user_id is required to reassign")
        require_in_scope(actor, request.assignee_user_id, "assignee_user_id")
    if request.operation in (BulkOperation.SNOOZE, BulkOperation.RESCHEDULE) and (
            request.until is None or request.until <= now):
        raise InvalidField("until", f"until is required to {request.operation} and must be in the future")
    if actor.team is not None:
        if request.filters.assignee_user_id not in (None, *actor.team):
            raise InvalidField("filter.assignee_user_id", "that user is not in your team")
        request = replace(request, filters=replace(request.filters, assignees=tuple(sorted(actor.team))))
    if not request.filters.statuses:
        request = replace(request, filters=replace(request.filters, statuses=OPEN_STATUSES))
    async with uow:
        stored = await uow.bulk.add_if_absent(request)
        await uow.commit()
    if stored.created_at != request.created_at and not stored.same_request(request):
        raise RequestIdReused(f"request id {request.request_id!r} was used for a different bulk request")
    return stored, stored.created_at == request.created_at


async def status(uow: UnitOfWork, actor: Actor, request_id: str) -> BulkRequest | None:
    """The request, if the actor may see it: admins every request of the tenant, managers those
    limited to (part of) their team."""
    if not actor.supervisor:
        raise NotAllowed("only managers and admins may change actions in bulk")
    async with uow:
        found = await uow.bulk.get(actor.tenant, request_id)
    if found is None or actor.team is None:
        return found
    scope = found.filters.assignees
    return found if scope is not None and set(scope) <= actor.team else None


def _change(request: BulkRequest, action: ManualAction, now: datetime) -> Payload | None:
    if action.lease_active(now):
        return None  # someone is working it right now; a bulk change must not pull it away
    try:
        if request.operation is BulkOperation.REASSIGN:
            assert request.assignee_user_id is not None
            return action.reassign(request.requested_by, request.assignee_user_id, now, reason=request.reason)
        if request.operation is BulkOperation.DELETE:
            return action.delete(request.requested_by, reason=request.reason, now=now)
        assert request.until is not None
        if request.operation is BulkOperation.RESCHEDULE:
            if action.status is ActionStatus.SCHEDULED:  # the SMS goes out at the new time instead
                return action.move_send_time(request.requested_by, request.until, now)
            return action.reschedule(request.until, request.requested_by, request.reason, now)
        return action.snooze(request.requested_by, request.until, now, reason=request.reason)
    except DomainError:
        return None


async def run_chunk(uow: UnitOfWork, now: datetime, *, chunk: int = DEFAULT_CHUNK) -> BulkRequest | None:
    """Work the next chunk of a running bulk request; None when no request is waiting."""
    async with uow:
        request = await uow.bulk.next_running()
        if request is None:
            return None
        ids = await uow.actions.matching_ids(request.tenant, request.filters, after=request.last_id,
                                             limit=chunk)
        actions = await uow.actions.get_many(request.tenant, ids)
        changed: list[ManualAction] = []
        messages: list[tuple[str, Envelope[Any]]] = []
        for action in actions:
            # The filter is checked again under the row lock: the action may have moved on since.
            if not request.filters.matches(action):
                continue
            request.matched += 1
            event = _change(request, action, now)
            if event is None:
                request.unchanged += 1
                continue
            request.changed += 1
            changed.append(action)
            messages.append((topic_of(event), envelope_for(action, event)))
        await uow.actions.save_many(changed)
        await publish_all(uow, messages)
        if ids:
            request.last_id = ids[-1]
        if len(ids) < chunk:
            request.status = BulkStatus.DONE
            request.finished_at = now
        await uow.bulk.save(request)
        await uow.commit()
    metrics.BULK_CHANGES.labels(operation=request.operation.value).inc(len(changed))
    return request
