"""The queue API under ``/v1``. Thin: authenticate, parse, call a use case, render.

Tenant comes only from the token. Agents see and act only on the actions assigned to them; an
action they may not see answers 404 exactly like a missing one (see docs/decisions/0008).
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from action_queue.adapters.sql import SqlUnitOfWorkFactory
from action_queue.domain import (
    DEFAULT_LEASE,
    ActionNotFound,
    ActionStatus,
    Actor,
    BlockedAtWork,
    DomainError,
    InvalidField,
    InvalidTransition,
    NotAllowed,
    ReservedByAnother,
)
from action_queue.domain.checks import QuietHours
from action_queue.domain.people import Outcome, OutOfOffice, QueueSettings, parse_clock
from action_queue.entrypoints.schemas import (
    ActionDetail,
    ActionListQuery,
    ActionPage,
    BulkRequestBody,
    BulkRequestView,
    CompleteRequest,
    ListCounts,
    OutcomeSetting,
    PlaceCallRequest,
    QuietHoursSetting,
    ReassignRequest,
    RescheduleRequest,
    ScheduleSmsRequest,
    SendSmsRequest,
    SettingsBody,
    SettingsView,
    SkipRequest,
    SnoozeRequest,
)
from action_queue.handlers import bulk as bulk_handlers
from action_queue.handlers import queue
from action_queue.handlers.ports import (
    ActionFilter,
    ActionSummary,
    BulkOperation,
    BulkRequest,
    Cursor,
    Sort,
    SortKey,
    UnitOfWork,
    UnitOfWorkFactory,
)
from manual_actions.auth import IdentityStore, Principal, Role, authorize, bearer_scheme, require_roles
from manual_actions.contracts import ActionType
from manual_actions.http import create_app, problem

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ApiContext:
    """What the routes need, kept on ``app.state.api``. ``reads`` makes the units of work of use
    cases that only read (no transaction: fewer round trips), ``claims`` Let's Start's; ``uow``
    when not given."""

    uow: UnitOfWorkFactory
    clock: Clock = _utcnow
    lease: timedelta = DEFAULT_LEASE
    reads: UnitOfWorkFactory | None = None
    claims: UnitOfWorkFactory | None = None

    def read(self) -> UnitOfWork:
        return (self.reads or self.uow)()

    def claim(self) -> UnitOfWork:
        """Let's Start's unit of work: optimistic when the store offers one (docs/decisions/0026)."""
        return (self.claims or self.uow)()


async def _context(request: Request) -> ApiContext:
    # async although it awaits nothing: FastAPI runs a plain ``def`` dependency in a worker thread.
    context: ApiContext = request.app.state.api
    return context


# Every role may use the queue; what each one sees is decided by ``Actor.can_access``.
_EVERY_ROLE = (Role.ADMIN, Role.MANAGER, Role.AGENT)


ContextDep = Annotated[ApiContext, Depends(_context)]


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]


async def _actor(request: Request, credentials: Credentials) -> Actor:
    """Admins act on the whole tenant, managers on their team (from the user directory), agents on
    their own actions. Every role may call; one dependency (token, role and actor together): each
    dependency FastAPI resolves costs every queue request CPU."""
    principal = await authorize(request, credentials, _EVERY_ROLE)
    ctx: ApiContext = request.app.state.api
    return await queue.resolve_actor(ctx.read(), principal.tenant, principal.user_id, principal.role)


ActorDep = Annotated[Actor, Depends(_actor)]


def _json(model: BaseModel) -> Response:
    """``model`` (an instance of the route's response model) as the JSON body, serialised once by
    pydantic. Returned as a model, FastAPI would validate it against the response model again and
    serialise it through intermediate Python data: on the hot routes (Let's Start, the list) that
    was a measurable part of the request's CPU."""
    return Response(content=model.model_dump_json(by_alias=True), media_type="application/json")


def _page_json(items: Sequence[ActionSummary], next_cursor: Cursor | None,
               counts: ListCounts | None) -> bytes:
    """The list's ``ActionPage`` as JSON, serialised by orjson straight from the summaries (dataclasses:
    field order, enums as values, UTC as ``Z``), byte for byte what pydantic makes of the response
    model (a unit test holds them equal) at a fraction of the CPU of building 50 models first."""
    return orjson.dumps({"items": items,
                         "next_cursor": _encode_cursor(next_cursor) if next_cursor else None,
                         "counts": counts.model_dump(mode="json") if counts is not None else None},
                        option=orjson.OPT_UTC_Z, default=_uuid_text)


def _uuid_text(value: object) -> str:
    # asyncpg's UUIDs are a subclass orjson does not take for uuid.UUID.
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


@contextmanager
def _as_problem() -> Iterator[None]:
    """Render domain errors as problem+json."""
    try:
        yield
    except ActionNotFound as exc:
        raise problem(404, "Manual action not found", exc.detail, action_id=str(exc.action_id)) from exc
    except InvalidTransition as exc:
        raise problem(409, "Invalid status transition", exc.detail, action_id=str(exc.action_id),
                      action_status=str(exc.status), attempted=exc.attempted) from exc
    except ReservedByAnother as exc:
        raise problem(409, "Reserved by another user", exc.detail, action_id=str(exc.action_id),
                      reserved_by=str(exc.reserved_by) if exc.reserved_by else None) from exc
    except InvalidField as exc:
        raise problem(422, "Invalid field", exc.detail, field=exc.field,
                      errors=[{"field": exc.field, "message": exc.detail}]) from exc
    except NotAllowed as exc:
        raise problem(403, "Forbidden", exc.detail) from exc
    except BlockedAtWork as exc:
        raise problem(409, "Blocked at the moment of work", exc.detail, action_id=str(exc.action_id),
                      action_status="skipped", reason=exc.reason) from exc
    except bulk_handlers.RequestIdReused as exc:
        raise problem(409, "Request id reused", exc.detail, field="request_id") from exc
    except DomainError as exc:  # pragma: no cover - every subclass reaching HTTP is mapped above
        raise problem(409, "Conflict", exc.detail) from exc


def _invalid(field: str, message: str) -> Exception:
    return problem(422, "Invalid field", f"Invalid {field}: {message}", field=field,
                   errors=[{"field": field, "message": message}])


def _cursor_value(name: str, value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _parse_cursor_value(name: str, value: object) -> object:
    if name == "id":
        return uuid.UUID(str(value))
    if name == "priority":
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError("priority must be an integer")
        return value
    parsed = datetime.fromisoformat(str(value))
    if parsed.tzinfo is None:
        raise ValueError("naive time")
    return parsed


def _encode_cursor(cursor: Cursor) -> str:
    """Opaque to clients: the sort and the last row's values of its columns."""
    names = [name for name, _ in cursor.sort.columns]
    raw = json.dumps({"s": str(cursor.sort),
                      "v": [_cursor_value(n, v) for n, v in zip(names, cursor.values, strict=True)]}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(value: str, sort: Sort) -> Cursor:
    """The cursor, which must come from a page of the same ``sort``."""
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        document = json.loads(raw)
        if document["s"] != str(sort):
            raise LookupError("other sort")
        names = [name for name, _ in sort.columns]
        values = document["v"]
        if not isinstance(values, list) or len(values) != len(names):
            raise ValueError("wrong number of values")
        return Cursor(sort, tuple(_parse_cursor_value(n, v) for n, v in zip(names, values, strict=True)))
    except LookupError as exc:
        raise _invalid("query.cursor", f"the cursor belongs to another sort than {sort}") from exc
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise _invalid("query.cursor", "not a cursor returned by this API") from exc


def _parse_sort(value: str) -> Sort:
    try:
        return Sort.parse(value)
    except ValueError as exc:
        keys = ", ".join(k.value for k in SortKey)
        raise _invalid("query.sort", f"sort by one of {keys}, with a leading - for descending") from exc


def _aware(field: str, value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise _invalid(field, "the time must carry a UTC offset")
    return value


router = APIRouter(prefix="/v1", tags=["manual actions"])


@router.get("/actions", response_model=ActionPage, summary="List manual actions")
async def list_actions(actor: ActorDep, ctx: ContextDep,
                       query: Annotated[ActionListQuery, Query()]) -> Response:
    """The tenant's actions in the chosen order (default oldest first, by (queued_at, id)); agents get
    only their own, managers their team's. Keyset pagination: pass ``next_cursor`` back with the
    same filters and sort."""
    order = _parse_sort(query.sort)
    filters = ActionFilter(assignee_user_id=query.assignee_user_id, workflow_id=query.workflow_id,
                           contact=query.contact, types=tuple(query.type or ()),
                           statuses=tuple(query.status or ()), overdue=query.overdue,
                           as_of=ctx.clock() if query.overdue is not None else None,
                           queued_from=_aware("query.queued_from", query.queued_from),
                           queued_to=_aware("query.queued_to", query.queued_to),
                           due_from=_aware("query.due_from", query.due_from),
                           due_to=_aware("query.due_to", query.due_to))
    after = _decode_cursor(query.cursor, order) if query.cursor else None
    with _as_problem():
        page = await queue.list_actions(ctx.read(), actor, filters, limit=query.limit, after=after,
                                        sort=order)
        tally = await queue.count_actions(ctx.read(), actor, filters) if query.counts else None
    summary = None
    if tally is not None:
        listed = set(filters.statuses or queue.DEFAULT_LIST_STATUSES)
        by_status: dict[ActionStatus, int] = {}
        by_type: dict[ActionType, int] = {}
        for (action_status, action_type), n in tally.items():
            by_status[action_status] = by_status.get(action_status, 0) + n
            if action_status in listed:
                by_type[action_type] = by_type.get(action_type, 0) + n
        summary = ListCounts(total=sum(by_type.values()), by_type=by_type, by_status=by_status)
    return Response(content=_page_json(page.items, page.next_cursor, summary), media_type="application/json")


@router.get("/actions/{action_id}", response_model=ActionDetail, summary="One manual action with its history")
async def get_action(action_id: uuid.UUID, actor: ActorDep, ctx: ContextDep) -> ActionDetail:
    with _as_problem():
        action = await queue.get_action(ctx.read(), actor, action_id)
    return ActionDetail.of(action)


@router.post(
    "/queue/next", response_model=ActionDetail, summary="Let's Start: reserve my next queued action",
    responses={204: {"description": "The caller's queue is empty."}},
)
async def next_action(actor: ActorDep, ctx: ContextDep) -> Response:
    """Reserves the caller's next action for the lease period, in queue order: priority desc, then
    due time (an action without one is due when it was queued), then age (queue time), then id."""
    with _as_problem():
        action = await queue.reserve_next(ctx.claim(), actor, now=ctx.clock(), lease=ctx.lease)
    if action is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return _json(ActionDetail.of(action))


@router.post("/actions/{action_id}/send-sms", response_model=ActionDetail, status_code=202,
             summary="Send the SMS (optionally edited); completes when the sender reports it sent")
async def send_sms(action_id: uuid.UUID, actor: ActorDep, ctx: ContextDep,
                   payload: SendSmsRequest | None = None) -> ActionDetail:
    with _as_problem():
        action = await queue.send_sms(ctx.uow(), actor, action_id, body=payload.body if payload else None,
                                      now=ctx.clock())
    return ActionDetail.of(action)


@router.post("/actions/{action_id}/call", response_model=ActionDetail, status_code=202,
             summary="Place the call: ring the agent, then bridge to the contact")
async def place_call(action_id: uuid.UUID, actor: ActorDep, ctx: ContextDep,
                     payload: PlaceCallRequest | None = None) -> ActionDetail:
    with _as_problem():
        action = await queue.place_call(ctx.uow(), actor, action_id,
                                        agent_phone=payload.agent_phone if payload else None, now=ctx.clock())
    return ActionDetail.of(action)


@router.post("/actions/{action_id}/complete", response_model=ActionDetail,
             summary="Record a call's outcome and complete the action")
async def complete(action_id: uuid.UUID, payload: CompleteRequest, actor: ActorDep,
                   ctx: ContextDep) -> ActionDetail:
    with _as_problem():
        action = await queue.complete_action(ctx.uow(), actor, action_id, outcome=payload.outcome,
                                             notes=payload.notes, now=ctx.clock())
    return ActionDetail.of(action)


@router.delete("/actions/{action_id}", response_model=ActionDetail,
               summary="Delete an action created by mistake (the trash icon)")
async def delete(action_id: uuid.UUID, actor: ActorDep, ctx: ContextDep,
                 reason: Annotated[str | None, Query(max_length=500)] = None) -> ActionDetail:
    with _as_problem():
        action = await queue.delete_action(ctx.uow(), actor, action_id, reason=reason, now=ctx.clock())
    return ActionDetail.of(action)


@router.post("/actions/{action_id}/lease", response_model=ActionDetail,
             summary="Renew my reservation of the action for another lease period")
async def renew_lease(action_id: uuid.UUID, actor: ActorDep, ctx: ContextDep) -> ActionDetail:
    with _as_problem():
        action = await queue.renew_lease(ctx.uow(), actor, action_id, now=ctx.clock(), lease=ctx.lease)
    return ActionDetail.of(action)


@router.post("/actions/{action_id}/release", response_model=ActionDetail,
             summary="Give my reservation back; the action is queued again")
async def release(action_id: uuid.UUID, actor: ActorDep, ctx: ContextDep) -> ActionDetail:
    with _as_problem():
        action = await queue.release(ctx.uow(), actor, action_id, now=ctx.clock())
    return ActionDetail.of(action)


@router.post("/actions/{action_id}/skip", response_model=ActionDetail,
             summary="Skip the action with a reason; it will not be worked")
async def skip(action_id: uuid.UUID, payload: SkipRequest, actor: ActorDep, ctx: ContextDep) -> ActionDetail:
    with _as_problem():
        action = await queue.skip(ctx.uow(), actor, action_id, reason=payload.reason, now=ctx.clock())
    return ActionDetail.of(action)


@router.post("/actions/{action_id}/snooze", response_model=ActionDetail,
             summary="Put the action aside until a time")
async def snooze(action_id: uuid.UUID, payload: SnoozeRequest, actor: ActorDep,
                 ctx: ContextDep) -> ActionDetail:
    with _as_problem():
        action = await queue.snooze(ctx.uow(), actor, action_id, until=payload.until, reason=payload.reason,
                                    now=ctx.clock())
    return ActionDetail.of(action)


@router.post("/actions/{action_id}/reschedule", response_model=ActionDetail,
             summary="Change when the action is due; it moves in the queue order")
async def reschedule(action_id: uuid.UUID, payload: RescheduleRequest, actor: ActorDep,
                     ctx: ContextDep) -> ActionDetail:
    """Sets ``due_at`` (null: as soon as possible) and publishes ActionRescheduled; the status and any
    reservation, snooze or scheduled send time stay. Agents on their own actions, managers on their
    team's, admins on the tenant's (404 otherwise). 409 once the action ended or while its SMS or call
    is under way; nothing is published when the due time is that already."""
    due_at = _aware("body.due_at", payload.due_at)
    with _as_problem():
        action = await queue.reschedule(ctx.uow(), actor, action_id, due_at=due_at, reason=payload.reason,
                                        now=ctx.clock())
    return ActionDetail.of(action)


@router.post("/actions/{action_id}/reassign", response_model=ActionDetail,
             summary="Move the action to another person's queue (managers and admins)")
async def reassign(action_id: uuid.UUID, payload: ReassignRequest, actor: ActorDep,
                   ctx: ContextDep) -> ActionDetail:
    with _as_problem():
        action = await queue.reassign(ctx.uow(), actor, action_id, to=payload.assignee_user_id,
                                      reason=payload.reason, now=ctx.clock())
    return ActionDetail.of(action)


def _zone(zone_name: str) -> str:
    if zone_name in (queue.TIMEZONE_CONTACT, queue.TIMEZONE_USER):
        return zone_name
    try:
        ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        message = f"unknown IANA time zone {zone_name!r}"
        raise problem(422, "Invalid field", message, field="body.timezone",
                      errors=[{"field": "body.timezone", "message": message}]) from exc
    return zone_name


@router.post("/actions/{action_id}/schedule-sms", response_model=ActionDetail,
             summary="Send the SMS (optionally edited) later, at a time in the contact's or user's time zone")
async def schedule_sms(action_id: uuid.UUID, payload: ScheduleSmsRequest, actor: ActorDep,
                       ctx: ContextDep) -> ActionDetail:
    zone = _zone(payload.timezone) if payload.timezone else None
    with _as_problem():
        action = await queue.schedule_sms(ctx.uow(), actor, action_id, send_at=payload.send_at,
                                          timezone_name=zone, body=payload.body, now=ctx.clock())
    return ActionDetail.of(action)


@router.delete("/actions/{action_id}/schedule", response_model=ActionDetail,
               summary="Cancel a scheduled SMS; the action is queued again")
async def cancel_schedule(action_id: uuid.UUID, actor: ActorDep, ctx: ContextDep) -> ActionDetail:
    with _as_problem():
        action = await queue.cancel_schedule(ctx.uow(), actor, action_id, now=ctx.clock())
    return ActionDetail.of(action)


def _bulk_view(request: BulkRequest) -> BulkRequestView:
    return BulkRequestView(request_id=request.request_id, operation=request.operation.value,
                           status=request.status.value, matched=request.matched, changed=request.changed,
                           unchanged=request.unchanged, created_at=request.created_at,
                           finished_at=request.finished_at)


@router.post("/actions/bulk", response_model=BulkRequestView, status_code=202,
             summary="Reassign, delete, snooze or reschedule (set the due time of) every action matching "
                     "a filter (managers: their team's; admins)",
             responses={200: {"description": "This request id was sent before: its request as it stands."}})
async def bulk(payload: BulkRequestBody, actor: ActorDep, ctx: ContextDep,
               response: Response) -> BulkRequestView:
    """Works in the background in chunks (see GET /v1/actions/bulk/{request_id}); idempotent by
    ``request_id``: the same id again returns the same request, a different body under it is a 409."""
    f = payload.filter
    request = BulkRequest(
        tenant=actor.tenant, request_id=payload.request_id, operation=BulkOperation(payload.operation),
        filters=ActionFilter(assignee_user_id=f.assignee_user_id, workflow_id=f.workflow_id,
                             contact=f.contact, types=tuple(f.type), statuses=tuple(f.status),
                             overdue=f.overdue, as_of=ctx.clock() if f.overdue is not None else None,
                             queued_from=f.queued_from, queued_to=f.queued_to, due_from=f.due_from,
                             due_to=f.due_to),
        requested_by=actor.user_id, created_at=ctx.clock(), assignee_user_id=payload.assignee_user_id,
        until=payload.until, reason=payload.reason)
    with _as_problem():
        stored, created = await bulk_handlers.submit(ctx.uow(), actor, request, now=ctx.clock())
    if not created:
        response.status_code = status.HTTP_200_OK
    return _bulk_view(stored)


@router.get("/actions/bulk/{request_id}", response_model=BulkRequestView,
            summary="Progress of a bulk request")
async def bulk_status(request_id: str, actor: ActorDep, ctx: ContextDep) -> BulkRequestView:
    with _as_problem():
        stored = await bulk_handlers.status(ctx.uow(), actor, request_id)
    if stored is None:
        raise problem(404, "Bulk request not found", f"no bulk request {request_id!r}", request_id=request_id)
    return _bulk_view(stored)


def _settings_view(settings: QueueSettings) -> SettingsView:
    return SettingsView(
        outcomes=[OutcomeSetting(slug=o.slug, label=o.label) for o in settings.outcomes],
        quiet_hours=QuietHoursSetting(start=f"{settings.quiet_hours.start:%H:%M}",
                                      end=f"{settings.quiet_hours.end:%H:%M}"),
        out_of_office=settings.out_of_office.value, away_counts_as_out=settings.away_counts_as_out,
        version=settings.version)


@router.get("/settings", response_model=SettingsView, summary="The tenant's queue settings")
async def get_settings(actor: ActorDep, ctx: ContextDep) -> SettingsView:
    """Call outcomes, quiet hours (contact-local) and the out-of-office policy; the defaults until an
    admin saves settings."""
    async with ctx.uow() as uow:
        return _settings_view(await uow.settings.get(actor.tenant))


_ADMIN = require_roles(Role.ADMIN)


@router.put("/settings", response_model=SettingsView, summary="Replace the tenant's queue settings (admins)")
async def put_settings(payload: SettingsBody, principal: Annotated[Principal, Depends(_ADMIN)],
                       ctx: ContextDep) -> SettingsView:
    try:
        settings = QueueSettings(
            outcomes=tuple(Outcome(o.slug, o.label) for o in payload.outcomes),
            quiet_hours=QuietHours(start=parse_clock(payload.quiet_hours.start, "quiet_hours.start"),
                                   end=parse_clock(payload.quiet_hours.end, "quiet_hours.end")),
            out_of_office=OutOfOffice(payload.out_of_office), away_counts_as_out=payload.away_counts_as_out)
    except InvalidField as exc:
        raise _invalid(f"body.{exc.field}", exc.detail) from exc
    async with ctx.uow() as uow:
        stored = await uow.settings.put(principal.tenant, settings, principal.user_id)
        await uow.commit()
    return _settings_view(stored)


def build_app(
    uow: UnitOfWorkFactory,
    identity: IdentityStore,
    engine: AsyncEngine,
    *,
    clock: Clock = _utcnow,
    lease: timedelta = DEFAULT_LEASE,
) -> FastAPI:
    """The action-queue HTTP app: operations endpoints from ``create_app`` plus the queue API."""

    async def database_ready() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    app = create_app("action-queue", readiness_checks=[("database", database_ready),
                                                       ("identity", identity.ping)])
    app.state.identity = identity
    reads: UnitOfWorkFactory | None = None
    claims: UnitOfWorkFactory | None = None
    if isinstance(uow, SqlUnitOfWorkFactory):
        reads, claims = uow.reading(), uow.claiming()
    app.state.api = ApiContext(uow=uow, clock=clock, lease=lease, reads=reads, claims=claims)
    app.include_router(router)
    return app
