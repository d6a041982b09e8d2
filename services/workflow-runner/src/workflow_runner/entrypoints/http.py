"""The workflow-runner API under ``/v1``. Thin: authenticate, parse, call a use case, render.

The tenant comes only from the token. Roles: admins manage teams, users, tokens and workflows;
admins and managers manage contacts and enroll them; every role may read teams, users and
contacts. Another tenant's entity
answers 404 exactly like a missing one. Domain errors become problem+json here.
"""

from __future__ import annotations

import base64
import csv
import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal, Protocol, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response, status
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from manual_actions.auth import IdentityStore, Principal, Role, require_roles
from manual_actions.http import create_app, problem_response
from workflow_runner.domain.errors import (
    AlreadyEnrolled,
    Conflict,
    DomainError,
    InvalidField,
    InvalidFields,
    NotFound,
    Problem,
    WorkflowInvalid,
    WorkflowNotPublished,
)
from workflow_runner.domain.imports import MAX_LISTED_ERRORS, MAX_ROWS, rows_from_csv, rows_from_json
from workflow_runner.domain.people import UserRole
from workflow_runner.domain.phone import normalise_phone
from workflow_runner.entrypoints.schemas import (
    ContactCreate,
    ContactPage,
    ContactUpdate,
    ContactView,
    EnrollmentCreate,
    EnrollmentPage,
    EnrollmentView,
    ImportErrorView,
    ImportView,
    TeamCreate,
    TeamPage,
    TeamUpdate,
    TeamView,
    TokenView,
    UserCreate,
    UserPage,
    UserUpdate,
    UserView,
    WorkflowCreate,
    WorkflowPage,
    WorkflowUpdate,
    WorkflowView,
)
from workflow_runner.handlers import handlers
from workflow_runner.handlers.commands import (
    CreateContact,
    CreateUser,
    CreateWorkflow,
    Enroll,
    PublishWorkflow,
    SaveDraft,
)
from workflow_runner.handlers.directory import Validator, validate_here
from workflow_runner.handlers.ports import ContactFilter, Cursor, UnitOfWork, UnitOfWorkFactory

SERVICE_NAME = "workflow-runner"

Admin = Annotated[Principal, Depends(require_roles(Role.ADMIN))]
Supervisor = Annotated[Principal, Depends(require_roles(Role.ADMIN, Role.MANAGER))]
AnyRole = Annotated[Principal, Depends(require_roles(Role.ADMIN, Role.MANAGER, Role.AGENT))]
Limit = Annotated[int, Query(ge=1, le=500)]
Offset = Annotated[int, Query(ge=0)]

T = TypeVar("T")


async def _uow(request: Request) -> UnitOfWork:
    factory: UnitOfWorkFactory = request.app.state.uow
    return factory()


def _identity(request: Request) -> IdentityStore:
    store: IdentityStore = request.app.state.identity
    return store


Uow = Annotated[UnitOfWork, Depends(_uow)]


def _next_offset(items: Sequence[T], limit: int, offset: int) -> int | None:
    return offset + limit if len(items) == limit else None


class _Keyed(Protocol):
    @property
    def id(self) -> uuid.UUID: ...

    @property
    def created_at(self) -> datetime | None: ...


def encode_cursor(item: _Keyed) -> str:
    """Opaque page position after ``item``: its (created_at, id), base64url."""
    assert item.created_at is not None
    return base64.urlsafe_b64encode(f"{item.created_at.isoformat()}|{item.id}".encode()).decode().rstrip("=")


def decode_cursor(value: str | None) -> Cursor | None:
    if value is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        at, _, item_id = raw.partition("|")
        parsed = datetime.fromisoformat(at)
        if parsed.tzinfo is None:
            raise ValueError("naive")
        return parsed, uuid.UUID(item_id)
    except ValueError as exc:
        raise InvalidField("query.cursor", "is not a cursor returned by this API") from exc


def _next_cursor(items: Sequence[_Keyed], limit: int) -> str | None:
    return encode_cursor(items[-1]) if len(items) == limit and items else None


CursorParam = Annotated[str | None, Query(max_length=200, description="next_cursor of the previous page")]


# --- teams -----------------------------------------------------------------------------------------

teams = APIRouter(prefix="/v1/teams", tags=["teams"])


@teams.post("", status_code=status.HTTP_201_CREATED, response_model=TeamView)
async def create_team(body: TeamCreate, principal: Admin, uow: Uow) -> TeamView:
    return TeamView.of(await handlers.create_team(uow, principal.tenant, body.name, body.description))


@teams.get("", response_model=TeamPage)
async def list_teams(
    principal: AnyRole, uow: Uow, limit: Limit = 100, cursor: CursorParam = None
) -> TeamPage:
    found = await handlers.list_teams(uow, principal.tenant, limit=limit, after=decode_cursor(cursor))
    return TeamPage(items=[TeamView.of(t) for t in found], next_cursor=_next_cursor(found, limit))


@teams.get("/{team_id}", response_model=TeamView)
async def get_team(team_id: uuid.UUID, principal: AnyRole, uow: Uow) -> TeamView:
    return TeamView.of(await handlers.get_team(uow, principal.tenant, team_id))


@teams.patch("/{team_id}", response_model=TeamView)
async def update_team(team_id: uuid.UUID, body: TeamUpdate, principal: Admin, uow: Uow) -> TeamView:
    return TeamView.of(await handlers.update_team(uow, principal.tenant, team_id, body.changes()))


@teams.delete(
    "/{team_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={409: {"description": "The team still has users."}},
)
async def delete_team(team_id: uuid.UUID, principal: Admin, uow: Uow) -> Response:
    await handlers.delete_team(uow, principal.tenant, team_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- users -----------------------------------------------------------------------------------------

users = APIRouter(prefix="/v1/users", tags=["users"])


@users.post("", status_code=status.HTTP_201_CREATED, response_model=UserView)
async def create_user(body: UserCreate, principal: Admin, uow: Uow) -> UserView:
    user = await handlers.create_user(
        uow,
        CreateUser(
            tenant=principal.tenant,
            name=body.name,
            phone=body.phone,
            role=UserRole(body.role),
            team_id=body.team_id,
            timezone=body.timezone,
            availability=body.availability_changes(),
            working_hours=body.model_dump()["working_hours"],
        ),
    )
    return UserView.of(user)


@users.get("", response_model=UserPage)
async def list_users(
    principal: AnyRole,
    uow: Uow,
    limit: Limit = 100,
    cursor: CursorParam = None,
    role: Literal["admin", "manager", "agent"] | None = None,
    team_id: uuid.UUID | None = None,
    availability: Literal["available", "away", "out_of_office"] | None = None,
) -> UserPage:
    found = await handlers.list_users(
        uow,
        principal.tenant,
        limit=limit,
        after=decode_cursor(cursor),
        role=role,
        team_id=team_id,
        availability=availability,
    )
    return UserPage(items=[UserView.of(u) for u in found], next_cursor=_next_cursor(found, limit))


@users.get("/{user_id}", response_model=UserView)
async def get_user(user_id: uuid.UUID, principal: AnyRole, uow: Uow) -> UserView:
    return UserView.of(await handlers.get_user(uow, principal.tenant, user_id))


@users.patch("/{user_id}", response_model=UserView)
async def update_user(user_id: uuid.UUID, body: UserUpdate, principal: Admin, uow: Uow) -> UserView:
    """Change the fields present. A role change applies to tokens issued afterwards."""
    return UserView.of(await handlers.update_user(uow, principal.tenant, user_id, body.changes()))


@users.delete("/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_user(user_id: uuid.UUID, principal: Admin, uow: Uow) -> Response:
    """The user gets no new work and leaves listings; past actions and history keep naming it."""
    await handlers.delete_user(uow, principal.tenant, user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@users.post("/{user_id}/tokens", status_code=status.HTTP_201_CREATED, response_model=TokenView)
async def issue_user_token(user_id: uuid.UUID, principal: Admin, uow: Uow, request: Request) -> TokenView:
    """A new API token acting as this user, with the user's role (shown once)."""
    user = await handlers.get_user(uow, principal.tenant, user_id)
    token = await _identity(request).issue_token(
        principal.tenant, Role(user.role.value), user.id, label=f"user {user.id} ({user.name})"
    )
    return TokenView(token=token, tenant=principal.tenant, user_id=user.id, role=user.role.value)


# --- contacts --------------------------------------------------------------------------------------

contacts = APIRouter(prefix="/v1/contacts", tags=["contacts"])


@contacts.post("", status_code=status.HTTP_201_CREATED, response_model=ContactView)
async def create_contact(body: ContactCreate, principal: Supervisor, uow: Uow) -> ContactView:
    contact = await handlers.create_contact(
        uow,
        CreateContact(
            tenant=principal.tenant,
            name=body.name,
            phone=body.phone,
            first_name=body.first_name,
            last_name=body.last_name,
            email=body.email,
            timezone=body.timezone,
            custom_fields=body.custom_fields,
            owner_user_id=body.owner_user_id,
            tags=body.tags,
            opted_out=body.flags("opted_out"),
            do_not_disturb=body.flags("do_not_disturb"),
            external_id=body.external_id,
        ),
    )
    return ContactView.of(contact)


@contacts.get("", response_model=ContactPage)
async def list_contacts(
    principal: AnyRole,
    uow: Uow,
    limit: Limit = 100,
    cursor: CursorParam = None,
    tag: Annotated[str | None, Query(max_length=64)] = None,
    owner_user_id: uuid.UUID | None = None,
    unassigned: bool | None = None,
    phone: Annotated[str | None, Query(max_length=64, description="Any format; compared in E.164")] = None,
    email: Annotated[str | None, Query(max_length=254)] = None,
    external_id: Annotated[str | None, Query(max_length=200)] = None,
    q: Annotated[str | None, Query(max_length=200, description="Part of the name (case-insensitive)")] = None,
) -> ContactPage:
    if phone is not None:
        phone = normalise_phone(phone, field="query.phone")
    filters = ContactFilter(
        tag=tag,
        owner_user_id=owner_user_id,
        unassigned=unassigned,
        phone=phone,
        email=email,
        external_id=external_id,
        name_contains=q,
    )
    found = await handlers.list_contacts(
        uow, principal.tenant, limit=limit, after=decode_cursor(cursor), filters=filters
    )
    return ContactPage(items=[ContactView.of(c) for c in found], next_cursor=_next_cursor(found, limit))


MAX_IMPORT_BYTES = 64 * 1024 * 1024
IMPORT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "text/csv": {
                "schema": {"type": "string"},
                "example": "external_id,name,phone,email,tags,opted_out_sms,custom.plan\n"
                "crm-1,Ada Lovelace,+14155550101,ada@example.com,vip;hot,false,gold\n",
            },
            "application/json": {
                "schema": {"type": "array", "maxItems": MAX_ROWS, "items": ContactCreate.model_json_schema()}
            },
        },
    }
}


@contacts.post(
    "/import",
    response_model=ImportView,
    openapi_extra=IMPORT_BODY,
    responses={
        415: {"description": "Neither text/csv nor application/json."},
        422: {
            "description": "The body as a whole is unusable (not a list, unknown CSV column, too many rows)."
        },
    },
)
async def import_contacts(request: Request, principal: Supervisor, uow: Uow) -> ImportView:
    """Import up to 100,000 contacts from CSV or a JSON list. Every row is validated; valid rows are
    stored (all in one transaction), invalid ones are reported as ``errors`` [{row, field, message}]
    with rows numbered from 1. A row whose ``external_id`` already exists updates that contact
    (the fields the input sets), so re-running an import is safe.

    CSV columns: name, first_name, last_name, phone, email, timezone, owner_user_id, external_id,
    tags (separated by ``;``), opted_out_sms, opted_out_call, dnd_sms, dnd_call (true/false), and
    ``custom.<key>`` per custom field.
    """
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in ("text/csv", "application/json"):
        return problem_response(
            415,
            "Unsupported media type",
            "Send the contacts as text/csv or as an application/json list.",
            instance=request.url.path,
        )
    body = await request.body()
    if len(body) > MAX_IMPORT_BYTES:
        raise InvalidField("body", f"is larger than {MAX_IMPORT_BYTES // (1024 * 1024)} MiB")
    if media_type == "text/csv":
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidField("body", "CSV must be UTF-8") from exc
        try:
            rows, present = rows_from_csv(text)
        except csv.Error as exc:
            raise InvalidField("body", f"is not valid CSV ({exc})") from exc
    else:
        try:
            document = json.loads(body)
        except ValueError as exc:
            raise InvalidField("body", f"is not valid JSON ({exc})") from exc
        rows, present = rows_from_json(document)
    result = await handlers.import_contacts(
        uow, principal.tenant, rows, present, validate=request.app.state.validate_import
    )
    return ImportView(
        imported=result.imported,
        inserted=result.inserted,
        updated=result.updated,
        failed=result.failed,
        errors=[
            ImportErrorView(row=e.row, field=e.field, message=e.message)
            for e in result.errors[:MAX_LISTED_ERRORS]
        ],
        errors_truncated=len(result.errors) > MAX_LISTED_ERRORS,
    )


@contacts.get("/{contact_id}", response_model=ContactView)
async def get_contact(contact_id: uuid.UUID, principal: AnyRole, uow: Uow) -> ContactView:
    return ContactView.of(await handlers.get_contact(uow, principal.tenant, contact_id))


@contacts.patch("/{contact_id}", response_model=ContactView)
async def update_contact(
    contact_id: uuid.UUID, body: ContactUpdate, principal: Supervisor, uow: Uow
) -> ContactView:
    return ContactView.of(await handlers.update_contact(uow, principal.tenant, contact_id, body.changes()))


@contacts.delete("/{contact_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_contact(contact_id: uuid.UUID, principal: Supervisor, uow: Uow) -> Response:
    await handlers.delete_contact(uow, principal.tenant, contact_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- workflows -------------------------------------------------------------------------------------

workflows = APIRouter(prefix="/v1/workflows", tags=["workflows"])


@workflows.post("", status_code=status.HTTP_201_CREATED, response_model=WorkflowView)
async def create_workflow(body: WorkflowCreate, principal: Admin, uow: Uow) -> WorkflowView:
    """Create a workflow whose version 1 is a draft. Steps are checked when it is published."""
    workflow = await handlers.create_workflow(
        uow, CreateWorkflow(principal.tenant, body.name, body.steps, goals=body.goals)
    )
    return WorkflowView.of(workflow)


@workflows.get("", response_model=WorkflowPage)
async def list_workflows(
    principal: Supervisor, uow: Uow, limit: Limit = 100, offset: Offset = 0
) -> WorkflowPage:
    found = await handlers.list_workflows(uow, principal.tenant, limit=limit, offset=offset)
    return WorkflowPage(
        items=[WorkflowView.of(w) for w in found], next_offset=_next_offset(found, limit, offset)
    )


@workflows.get("/{workflow_id}", response_model=WorkflowView)
async def get_workflow(workflow_id: uuid.UUID, principal: Supervisor, uow: Uow) -> WorkflowView:
    return WorkflowView.of(await handlers.get_workflow(uow, principal.tenant, workflow_id))


@workflows.put("/{workflow_id}", response_model=WorkflowView)
async def update_workflow(
    workflow_id: uuid.UUID, body: WorkflowUpdate, principal: Admin, uow: Uow
) -> WorkflowView:
    """Replace the draft (a published version never changes: editing one starts version N+1)."""
    workflow = await handlers.save_draft(
        uow, SaveDraft(principal.tenant, workflow_id, body.steps, name=body.name, goals=body.goals)
    )
    return WorkflowView.of(workflow)


@workflows.post(
    "/{workflow_id}/publish",
    response_model=WorkflowView,
    responses={422: {"description": "Every problem of the draft, under `errors`."}},
)
async def publish_workflow(workflow_id: uuid.UUID, principal: Admin, uow: Uow) -> WorkflowView:
    workflow = await handlers.publish_workflow(uow, PublishWorkflow(principal.tenant, workflow_id))
    return WorkflowView.of(workflow)


@workflows.post(
    "/{workflow_id}/enrollments",
    status_code=status.HTTP_201_CREATED,
    response_model=EnrollmentView,
    responses={409: {"description": "The workflow is not published, or the contact is already in it."}},
)
async def enroll(
    workflow_id: uuid.UUID, body: EnrollmentCreate, principal: Supervisor, uow: Uow
) -> EnrollmentView:
    """Enroll one contact in the newest published version and run it up to its first manual step."""
    enrollment = await handlers.enroll(uow, Enroll(principal.tenant, workflow_id, body.contact_id))
    return EnrollmentView.of(enrollment)


# --- enrollments -----------------------------------------------------------------------------------

enrollments = APIRouter(prefix="/v1/enrollments", tags=["enrollments"])


@enrollments.get("", response_model=EnrollmentPage)
async def list_enrollments(
    principal: Supervisor,
    uow: Uow,
    workflow_id: uuid.UUID | None = None,
    contact_id: uuid.UUID | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> EnrollmentPage:
    found = await handlers.list_enrollments(
        uow, principal.tenant, workflow_id=workflow_id, contact_id=contact_id, limit=limit, offset=offset
    )
    return EnrollmentPage(
        items=[EnrollmentView.of(e) for e in found], next_offset=_next_offset(found, limit, offset)
    )


@enrollments.get("/{enrollment_id}", response_model=EnrollmentView)
async def get_enrollment(enrollment_id: uuid.UUID, principal: Supervisor, uow: Uow) -> EnrollmentView:
    return EnrollmentView.of(await handlers.get_enrollment(uow, principal.tenant, enrollment_id))


# --- errors ----------------------------------------------------------------------------------------


def _located(field: str) -> str:
    """Where a field is: in the body unless the name already says (``query.cursor``, ``body``)."""
    return field if field == "body" or field.startswith(("query.", "path.", "body.")) else f"body.{field}"


def _problem(request: Request, exc: Exception) -> Response:
    """Render a domain error as problem+json (status, title, and the ids/fields it names)."""
    path = request.url.path
    if isinstance(exc, NotFound):
        return problem_response(
            404,
            f"{exc.kind.capitalize()} not found",
            f"No {exc.kind} {exc.entity_id} in this tenant.",
            instance=path,
            extra={f"{exc.kind}_id": exc.entity_id},
        )
    if isinstance(exc, InvalidField):
        problems = exc.problems if isinstance(exc, InvalidFields) else (Problem(exc.field, exc.message),)
        errors = [{"field": _located(p.field), "message": p.message} for p in problems]
        return problem_response(
            422,
            "Request validation failed",
            "; ".join(f"Invalid {e['field']}: {e['message']}" for e in errors),
            instance=path,
            extra={"errors": errors},
        )
    if isinstance(exc, Conflict):
        extra = {"errors": [{"field": _located(exc.field), "message": exc.message}]} if exc.field else None
        return problem_response(409, "Conflict", exc.message, instance=path, extra=extra)
    if isinstance(exc, WorkflowInvalid):
        errors = [{"field": p.field, "message": p.message} for p in exc.problems]
        return problem_response(
            422,
            "Workflow cannot be published",
            f"The draft has {len(errors)} problem(s), first {errors[0]['field']}: {errors[0]['message']}",
            instance=path,
            extra={"workflow_id": str(exc.workflow_id), "errors": errors},
        )
    if isinstance(exc, WorkflowNotPublished):
        return problem_response(
            409,
            "Workflow not published",
            f"Workflow {exc.workflow_id} has no published version; publish it first.",
            instance=path,
            extra={"workflow_id": str(exc.workflow_id)},
        )
    if isinstance(exc, AlreadyEnrolled):
        return problem_response(
            409,
            "Contact already enrolled",
            f"Contact {exc.contact_id} is still going through workflow {exc.workflow_id}.",
            instance=path,
            extra={
                "workflow_id": str(exc.workflow_id),
                "contact_id": str(exc.contact_id),
                "enrollment_id": str(exc.enrollment_id),
            },
        )
    return problem_response(409, "Conflict", str(exc), instance=path)


async def _on_domain_error(request: Request, exc: Exception) -> Response:
    return _problem(request, exc)


def build_app(
    uow: UnitOfWorkFactory,
    identity: IdentityStore,
    engine: AsyncEngine | None = None,
    *,
    validate_import: Validator = validate_here,
) -> FastAPI:
    """The API on ``manual_actions.http.create_app`` (health, readiness, metrics, problem+json).

    Readiness: this service's database (when ``engine`` is given) and the identity store.
    """

    async def database_ready() -> None:
        assert engine is not None
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    checks: list[Any] = [("identity", identity.ping)]
    if engine is not None:
        checks.insert(0, ("database", database_ready))
    app = create_app(
        SERVICE_NAME,
        readiness_checks=checks,
        description="Users, contacts, workflows and enrollments; queues manual actions.",
    )
    app.state.uow = uow
    app.state.identity = identity
    app.state.validate_import = validate_import
    app.add_exception_handler(DomainError, _on_domain_error)
    for router in (teams, users, contacts, workflows, enrollments):
        app.include_router(router)
    return app
