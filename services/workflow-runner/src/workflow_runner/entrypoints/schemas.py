"""Request and response bodies of the HTTP API (pydantic). Field checks call the domain's own
validators, so every invalid field is reported at once as ``body.<field>``."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from workflow_runner.domain.enrollments import Enrollment
from workflow_runner.domain.errors import InvalidField
from workflow_runner.domain.people import (
    Contact,
    CustomValue,
    User,
    validate_custom_fields,
    validate_email,
    validate_timezone,
)
from workflow_runner.domain.phone import normalise_phone
from workflow_runner.domain.steps import MAX_STEPS
from workflow_runner.domain.workflows import Workflow, WorkflowVersion


def _checked(check: Callable[[Any], Any], error_type: str) -> AfterValidator:
    def run(value: Any) -> Any:
        if value is None:
            return None
        try:
            return check(value)
        except InvalidField as exc:
            # A nested field (custom_fields.<key>) is named in the message; the location is the field.
            message = f"{exc.field}: {exc.message}" if "." in exc.field else exc.message
            raise PydanticCustomError(error_type, message) from exc

    return AfterValidator(run)


Phone = Annotated[
    str, Field(max_length=64, examples=["+14155552671"]), _checked(normalise_phone, "phone_number")
]
Name = Annotated[str, Field(min_length=1, max_length=200)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class UserCreate(_Request):
    name: Name
    phone: Phone = Field(
        description="The user's own phone (E.164 after normalisation); the dialer rings it first."
    )
    role: Literal["admin", "manager", "agent"]


class UserView(BaseModel):
    id: uuid.UUID
    name: str
    first_name: str
    phone: str
    role: str
    created_at: datetime

    @classmethod
    def of(cls, user: User) -> UserView:
        return cls(
            id=user.id,
            name=user.name,
            first_name=user.first_name,
            phone=user.phone,
            role=user.role.value,
            created_at=user.created_at,
        )


class UserPage(BaseModel):
    items: list[UserView]
    next_offset: int | None


class TokenView(BaseModel):
    token: str = Field(description="Shown once; only its hash is stored.")
    tenant: str
    user_id: uuid.UUID
    role: str


class ContactCreate(_Request):
    name: Annotated[str | None, Field(max_length=200)] = None
    first_name: Annotated[str | None, Field(max_length=200)] = None
    last_name: Annotated[str | None, Field(max_length=200)] = None
    phone: Annotated[Phone | None, Field(description="E.164 after normalisation; null if none")] = None
    email: Annotated[str | None, Field(max_length=254), _checked(validate_email, "email")] = None
    timezone: Annotated[str | None, Field(max_length=64), _checked(validate_timezone, "timezone")] = None
    custom_fields: Annotated[dict[str, CustomValue], _checked(validate_custom_fields, "custom_fields")] = (
        Field(default_factory=dict)
    )
    owner_user_id: uuid.UUID | None = None


class ContactView(BaseModel):
    id: uuid.UUID
    name: str
    first_name: str
    last_name: str
    phone: str | None
    email: str | None
    timezone: str | None
    custom_fields: dict[str, CustomValue]
    owner_user_id: uuid.UUID | None
    created_at: datetime | None
    updated_at: datetime | None

    @classmethod
    def of(cls, contact: Contact) -> ContactView:
        return cls(
            id=contact.id,
            name=contact.name,
            first_name=contact.first_name,
            last_name=contact.last_name,
            phone=contact.phone,
            email=contact.email,
            timezone=contact.timezone,
            custom_fields=contact.custom_fields,
            owner_user_id=contact.owner_user_id,
            created_at=contact.created_at,
            updated_at=contact.updated_at,
        )


class ContactPage(BaseModel):
    items: list[ContactView]
    next_offset: int | None


Steps = Annotated[
    list[dict[str, Any]],
    Field(max_length=MAX_STEPS, description="Step objects with 'id' and 'type'; fully checked on publish."),
]


class WorkflowCreate(_Request):
    name: Name
    steps: Steps


class WorkflowUpdate(_Request):
    """Replace the draft's steps; when the newest version is published this starts a new draft."""

    name: Name | None = None
    steps: Steps


class VersionView(BaseModel):
    version: int
    status: str
    steps: list[dict[str, Any]]
    created_at: datetime
    published_at: datetime | None

    @classmethod
    def of(cls, version: WorkflowVersion) -> VersionView:
        return cls(
            version=version.number,
            status=version.status.value,
            steps=version.step_specs,
            created_at=version.created_at,
            published_at=version.published_at,
        )


class WorkflowView(BaseModel):
    id: uuid.UUID
    name: str
    status: Literal["draft", "published"] = Field(description="Status of the newest version.")
    version: int = Field(description="Newest version number.")
    published_version: int | None = Field(description="The version new enrollments enter, if any.")
    steps: list[dict[str, Any]] = Field(description="Steps of the newest version.")
    versions: list[VersionView]
    created_at: datetime | None
    updated_at: datetime | None

    @classmethod
    def of(cls, workflow: Workflow) -> WorkflowView:
        latest = workflow.latest
        published = workflow.published
        return cls(
            id=workflow.id,
            name=workflow.name,
            status=latest.status.value,
            version=latest.number,
            published_version=published.number if published else None,
            steps=latest.step_specs,
            versions=[VersionView.of(v) for v in workflow.versions],
            created_at=workflow.created_at,
            updated_at=workflow.updated_at,
        )


class WorkflowPage(BaseModel):
    items: list[WorkflowView]
    next_offset: int | None


class EnrollmentCreate(_Request):
    contact_id: uuid.UUID


class HistoryView(BaseModel):
    step_id: str | None
    at: datetime
    event: str
    detail: dict[str, Any]


class EnrollmentView(BaseModel):
    id: uuid.UUID
    workflow_id: uuid.UUID
    workflow_version: int
    contact_id: uuid.UUID
    status: Literal["active", "waiting", "completed", "stopped"]
    current_step_id: str | None
    waiting_action_id: uuid.UUID | None
    history: list[HistoryView]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, enrollment: Enrollment) -> EnrollmentView:
        return cls(
            id=enrollment.id,
            workflow_id=enrollment.workflow_id,
            workflow_version=enrollment.workflow_version,
            contact_id=enrollment.contact_id,
            status=enrollment.status.value,
            current_step_id=enrollment.current_step_id,
            waiting_action_id=enrollment.waiting_action_id,
            history=[
                HistoryView(step_id=h.step_id, at=h.at, event=h.event.value, detail=h.detail)
                for h in enrollment.history
            ],
            created_at=enrollment.created_at,
            updated_at=enrollment.updated_at,
        )


class EnrollmentPage(BaseModel):
    items: list[EnrollmentView]
    next_offset: int | None
