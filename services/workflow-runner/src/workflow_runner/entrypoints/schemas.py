"""Request and response bodies of the HTTP API (pydantic). Field checks call the domain's own
validators, so every invalid field is reported at once as ``body.<field>``."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from workflow_runner.domain.directory import Team
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


Timezone = Annotated[
    str, Field(max_length=64, examples=["America/New_York"]), _checked(validate_timezone, "timezone")
]


class ChannelFlagsIn(_Request):
    """Per-channel flags; a channel left out keeps its current value (false for a new contact)."""

    sms: bool | None = None
    call: bool | None = None


class ChannelFlagsView(BaseModel):
    sms: bool
    call: bool


class AvailabilityIn(_Request):
    status: Literal["available", "away", "out_of_office"]
    from_: datetime | None = Field(
        default=None, alias="from", description="Start of the absence (open: already); with an offset."
    )
    until: datetime | None = Field(default=None, description="End of the absence (open: until changed).")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class AvailabilityView(BaseModel):
    status: str
    from_: datetime | None = Field(serialization_alias="from")
    until: datetime | None


class IntervalIn(_Request):
    start: str = Field(examples=["09:00"], description="HH:MM, local time of the user's time zone.")
    end: str = Field(examples=["17:00"], description="HH:MM after start; 24:00 for midnight.")


WorkingHoursIn = Annotated[
    dict[str, list[IntervalIn]] | None,
    Field(
        description="Weekday (mon..sun) -> working intervals; a weekday left out is a day off; "
        "null: no limit."
    ),
]


def _availability_changes(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    return {"status": value["status"], "from": value.get("from_"), "until": value.get("until")}


class UserCreate(_Request):
    name: Name
    phone: Phone = Field(
        description="The user's own phone (E.164 after normalisation); the dialer rings it first."
    )
    role: Literal["admin", "manager", "agent"]
    team_id: uuid.UUID | None = None
    timezone: Timezone | None = Field(default=None, description="IANA name; UTC when left out.")
    availability: AvailabilityIn | None = None
    working_hours: WorkingHoursIn = None

    def availability_changes(self) -> dict[str, Any] | None:
        return _availability_changes(self.availability.model_dump() if self.availability else None)


class UserUpdate(_Request):
    """Only the fields present change."""

    name: Name | None = None
    phone: Phone | None = None
    role: Literal["admin", "manager", "agent"] | None = None
    team_id: uuid.UUID | None = None
    timezone: Timezone | None = None
    availability: AvailabilityIn | None = None
    working_hours: WorkingHoursIn = None

    def changes(self) -> dict[str, Any]:
        """The fields the request set, in the domain's shape; null is refused where the field
        cannot be empty."""
        raw = self.model_dump(exclude_unset=True)
        for required in ("name", "phone", "role", "timezone", "availability"):
            if required in raw and raw[required] is None:
                raise InvalidField(required, "must not be null")
        if "availability" in raw:
            raw["availability"] = _availability_changes(raw["availability"])
        return raw


class UserView(BaseModel):
    id: uuid.UUID
    name: str
    first_name: str
    phone: str
    role: str
    team_id: uuid.UUID | None
    timezone: str
    availability: AvailabilityView
    available_now: bool = Field(description="Not away or out of office at this moment.")
    working_hours: dict[str, list[dict[str, str]]] | None
    version: int
    created_at: datetime
    updated_at: datetime | None

    @classmethod
    def of(cls, user: User) -> UserView:
        a = user.availability
        return cls(
            id=user.id,
            name=user.name,
            first_name=user.first_name,
            phone=user.phone,
            role=user.role.value,
            team_id=user.team_id,
            timezone=user.timezone,
            availability=AvailabilityView(
                status=a.status.value, from_=a.unavailable_from, until=a.unavailable_until
            ),
            available_now=not a.is_unavailable_at(datetime.now(UTC)),
            working_hours=user.working_hours.as_dict() if user.working_hours is not None else None,
            version=user.version,
            created_at=user.created_at,
            updated_at=user.updated_at,
        )


class UserPage(BaseModel):
    items: list[UserView]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class TokenView(BaseModel):
    token: str = Field(description="Shown once; only its hash is stored.")
    tenant: str
    user_id: uuid.UUID
    role: str


class TeamCreate(_Request):
    name: Name
    description: Annotated[str | None, Field(max_length=2000)] = None


class TeamUpdate(_Request):
    name: Name | None = None
    description: Annotated[str | None, Field(max_length=2000)] = None

    def changes(self) -> dict[str, Any]:
        raw = self.model_dump(exclude_unset=True)
        if "name" in raw and raw["name"] is None:
            raise InvalidField("name", "must not be null")
        return raw


class TeamView(BaseModel):
    id: uuid.UUID
    name: str
    description: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, team: Team) -> TeamView:
        return cls(
            id=team.id,
            name=team.name,
            description=team.description,
            created_at=team.created_at,
            updated_at=team.updated_at,
        )


class TeamPage(BaseModel):
    items: list[TeamView]
    next_cursor: str | None


Tags = Annotated[list[str], Field(max_length=50, description="Labels; commas are not allowed in a tag.")]
ExternalId = Annotated[
    str | None,
    Field(max_length=200, description="Id in the system the contact came from; unique per tenant."),
]


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
    tags: Tags = Field(default_factory=list)
    opted_out: ChannelFlagsIn | None = Field(default=None, description="The contact asked not to be reached.")
    do_not_disturb: ChannelFlagsIn | None = Field(default=None, description="A person paused the channel.")
    external_id: ExternalId = None

    def flags(self, name: str) -> dict[str, bool] | None:
        value = getattr(self, name)
        return value.model_dump(exclude_none=True) if value is not None else None


class ContactUpdate(_Request):
    """Only the fields present change; ``custom_fields`` and ``tags`` are replaced whole, the
    channel flags per channel."""

    name: Annotated[str | None, Field(max_length=200)] = None
    first_name: Annotated[str | None, Field(max_length=200)] = None
    last_name: Annotated[str | None, Field(max_length=200)] = None
    phone: Annotated[Phone | None, Field(description="E.164 after normalisation; null removes it")] = None
    email: Annotated[str | None, Field(max_length=254), _checked(validate_email, "email")] = None
    timezone: Annotated[str | None, Field(max_length=64), _checked(validate_timezone, "timezone")] = None
    custom_fields: Annotated[
        dict[str, CustomValue] | None, _checked(validate_custom_fields, "custom_fields")
    ] = None
    owner_user_id: uuid.UUID | None = None
    tags: Tags | None = None
    opted_out: ChannelFlagsIn | None = None
    do_not_disturb: ChannelFlagsIn | None = None
    external_id: ExternalId = None

    def changes(self) -> dict[str, Any]:
        raw = self.model_dump(exclude_unset=True)
        for key in ("opted_out", "do_not_disturb"):
            if key in raw:
                raw[key] = {k: v for k, v in (raw[key] or {}).items() if v is not None}
        for key in ("custom_fields", "tags"):
            if key in raw and raw[key] is None:
                raw[key] = {} if key == "custom_fields" else []
        if "name" in raw and raw["name"] is None:
            raise InvalidField("name", "must not be null")
        return raw


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
    tags: list[str]
    opted_out: ChannelFlagsView
    do_not_disturb: ChannelFlagsView
    external_id: str | None
    version: int
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
            tags=contact.tags,
            opted_out=ChannelFlagsView(**contact.opted_out.as_dict()),
            do_not_disturb=ChannelFlagsView(**contact.do_not_disturb.as_dict()),
            external_id=contact.external_id,
            version=contact.version,
            created_at=contact.created_at,
            updated_at=contact.updated_at,
        )


class ContactPage(BaseModel):
    items: list[ContactView]
    next_cursor: str | None


class ImportErrorView(BaseModel):
    row: int = Field(description="Data row number, from 1 (a CSV header is not counted).")
    field: str
    message: str


class ImportView(BaseModel):
    imported: int = Field(description="Rows stored: inserted + updated.")
    inserted: int
    updated: int = Field(description="Rows whose external_id matched an existing contact.")
    failed: int = Field(description="Rows not imported because of at least one error.")
    errors: list[ImportErrorView] = Field(description="Every problem, by row (the first 1,000).")
    errors_truncated: bool


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
