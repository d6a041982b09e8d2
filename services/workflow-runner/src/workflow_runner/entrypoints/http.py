"""The workflow-runner API under ``/v1``. Thin: authenticate, parse, call a use case, render.

The tenant comes only from the token. Roles: admins manage users, tokens and workflows; admins and
managers create contacts and enroll them; every role may read contacts. Another tenant's entity
answers 404 exactly like a missing one. Domain errors become problem+json here.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response, status
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from manual_actions.auth import IdentityStore, Principal, Role, require_roles
from manual_actions.http import create_app, problem_response
from workflow_runner.domain.errors import (
    AlreadyEnrolled,
    DomainError,
    InvalidField,
    NotFound,
    WorkflowInvalid,
    WorkflowNotPublished,
)
from workflow_runner.domain.people import UserRole
from workflow_runner.entrypoints.schemas import (
    ContactCreate,
    ContactPage,
    ContactView,
    EnrollmentCreate,
    EnrollmentPage,
    EnrollmentView,
    TokenView,
    UserCreate,
    UserPage,
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
from workflow_runner.handlers.ports import UnitOfWork, UnitOfWorkFactory

SERVICE_NAME = "workflow-runner"

Admin = Annotated[Principal, Depends(require_roles(Role.ADMIN))]
Supervisor = Annotated[Principal, Depends(require_roles(Role.ADMIN, Role.MANAGER))]
AnyRole = Annotated[Principal, Depends(require_roles(Role.ADMIN, Role.MANAGER, Role.AGENT))]
Limit = Annotated[int, Query(ge=1, le=500)]
Offset = Annotated[int, Query(ge=0)]

T = TypeVar("T")


def _uow(request: Request) -> UnitOfWork:
    factory: UnitOfWorkFactory = request.app.state.uow
    return factory()


def _identity(request: Request) -> IdentityStore:
    store: IdentityStore = request.app.state.identity
    return store


Uow = Annotated[UnitOfWork, Depends(_uow)]


def _next_offset(items: Sequence[T], limit: int, offset: int) -> int | None:
    return offset + limit if len(items) == limit else None


# --- users -----------------------------------------------------------------------------------------

users = APIRouter(prefix="/v1/users", tags=["users"])


@users.post("", status_code=status.HTTP_201_CREATED, response_model=UserView)
async def create_user(body: UserCreate, principal: Admin, uow: Uow) -> UserView:
    user = await handlers.create_user(
        uow, CreateUser(tenant=principal.tenant, name=body.name, phone=body.phone, role=UserRole(body.role))
    )
    return UserView.of(user)


@users.get("", response_model=UserPage)
async def list_users(principal: Supervisor, uow: Uow, limit: Limit = 100, offset: Offset = 0) -> UserPage:
    found = await handlers.list_users(uow, principal.tenant, limit=limit, offset=offset)
    return UserPage(items=[UserView.of(u) for u in found], next_offset=_next_offset(found, limit, offset))


@users.get("/{user_id}", response_model=UserView)
async def get_user(user_id: uuid.UUID, principal: AnyRole, uow: Uow) -> UserView:
    """Admins and managers read any user of the tenant; an agent only itself."""
    if principal.role is Role.AGENT and principal.user_id != user_id:
        raise NotFound("user", user_id)
    return UserView.of(await handlers.get_user(uow, principal.tenant, user_id))


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
        ),
    )
    return ContactView.of(contact)


@contacts.get("", response_model=ContactPage)
async def list_contacts(principal: AnyRole, uow: Uow, limit: Limit = 100, offset: Offset = 0) -> ContactPage:
    found = await handlers.list_contacts(uow, principal.tenant, limit=limit, offset=offset)
    return ContactPage(
        items=[ContactView.of(c) for c in found], next_offset=_next_offset(found, limit, offset)
    )


@contacts.get("/{contact_id}", response_model=ContactView)
async def get_contact(contact_id: uuid.UUID, principal: AnyRole, uow: Uow) -> ContactView:
    return ContactView.of(await handlers.get_contact(uow, principal.tenant, contact_id))


# --- workflows -------------------------------------------------------------------------------------

workflows = APIRouter(prefix="/v1/workflows", tags=["workflows"])


@workflows.post("", status_code=status.HTTP_201_CREATED, response_model=WorkflowView)
async def create_workflow(body: WorkflowCreate, principal: Admin, uow: Uow) -> WorkflowView:
    """Create a workflow whose version 1 is a draft. Steps are checked when it is published."""
    workflow = await handlers.create_workflow(uow, CreateWorkflow(principal.tenant, body.name, body.steps))
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
        uow, SaveDraft(principal.tenant, workflow_id, body.steps, name=body.name)
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
        field = f"body.{exc.field}"
        return problem_response(
            422,
            "Request validation failed",
            f"Invalid {field}: {exc.message}",
            instance=path,
            extra={"errors": [{"field": field, "message": exc.message}]},
        )
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


def build_app(uow: UnitOfWorkFactory, identity: IdentityStore, engine: AsyncEngine | None = None) -> FastAPI:
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
    app.add_exception_handler(DomainError, _on_domain_error)
    for router in (users, contacts, workflows, enrollments):
        app.include_router(router)
    return app
