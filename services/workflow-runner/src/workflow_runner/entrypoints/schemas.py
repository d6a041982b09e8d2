"""Request and response bodies of the HTTP API (pydantic). Field checks call the domain's own
validators, so every invalid field is reported at once as ``body.<field>``."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter
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


# --- step shapes (documentation of ``steps``; the domain parser is the one that checks them) ---

StepTarget = Annotated[
    str,
    Field(description="A step id of this workflow, or `end` (the enrollment completes).", examples=["call1"]),
]
Duration = Annotated[
    str,
    Field(
        description="ISO 8601 duration of weeks, days, hours, minutes, seconds (no months or years; "
        "1 second to 366 days).",
        examples=["PT30M", "PT2H", "P1D", "P1DT12H", "P2W"],
    ),
]


class _StepDoc(BaseModel):
    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Unique within the workflow; not `end`.")


class _Next(BaseModel):
    next: StepTarget | None = Field(
        default=None, description="Successor; default: the next step of the list (`end` after the last)."
    )


class TimeoutDoc(BaseModel):
    """If the step's action is not finished in time, the enrollment continues at `then` with outcome
    `timed_out`; `cancel` removes the action from the queue (CancelAction), `keep` leaves it there
    but the enrollment no longer waits on it."""

    after: Duration
    then: StepTarget
    action: Literal["cancel", "keep"] = "keep"


class _ManualOptions(_Next):
    priority: int = Field(default=0, ge=0, le=100, description="Higher is worked first in the queue.")
    due_in: Duration | None = Field(
        default=None, description="The action is due this long after it is queued."
    )
    expires_in: Duration | None = Field(
        default=None, description="The action expires (outcome `expired`) if nobody worked it by then."
    )
    timeout: TimeoutDoc | None = None


class AssignUserStep(_StepDoc, _Next):
    """Make one of `user_ids` the contact's owner (smooth weighted round robin)."""

    type: Literal["assign_user"]
    user_ids: list[uuid.UUID] = Field(min_length=1, max_length=100)
    weights: list[int] | None = Field(default=None, description="One weight (1-1000) per user.")
    only_unassigned: bool = False
    respect_working_hours: bool = False
    fallback_user_id: uuid.UUID | None = None


class ManualSmsStep(_StepDoc, _ManualOptions):
    """Queue an SMS for the contact's owner to review and send (merge fields allowed)."""

    type: Literal["manual_sms"]
    action_name: str = Field(max_length=200)
    message: str = Field(max_length=1600, examples=["Hi {{contact.first_name}}, this is {{user.name}}."])


class ManualCallStep(_StepDoc, _ManualOptions):
    """Queue a call for the contact's owner; `notes` guide the caller (merge fields allowed)."""

    type: Literal["manual_call"]
    action_name: str = Field(max_length=200)
    notes: str | None = Field(default=None, max_length=2000)


class TimeWindowDoc(BaseModel):
    """Weekdays and a local time range, read in the contact's time zone (UTC when it has none)."""

    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] | None = Field(
        default=None, description="Default: every day."
    )
    start: str = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", examples=["09:00"])
    end: str = Field(description="Exclusive; `24:00` is midnight.", examples=["17:00"])


class WaitStep(_StepDoc, _Next):
    """Pause: first `duration` (if given), then until `until`'s window is open (if given)."""

    type: Literal["wait"]
    duration: Duration | None = None
    until: TimeWindowDoc | None = None


class BranchStep(_StepDoc, _Next):
    """Route on the outcome of the latest manual action: keys `sms_sent`, `connected`, `no_answer`,
    `voicemail`, `busy`, `skipped`, `expired`, `deleted`, `failed`, `timed_out`, any custom call
    outcome slug, and `default`. An outcome without a route (and no `default`) goes to `next`."""

    type: Literal["branch"]
    on: dict[str, StepTarget] = Field(
        examples=[{"connected": "end", "no_answer": "sms2", "timed_out": "sms2", "default": "call2"}]
    )


class StopStep(_StepDoc):
    """End the enrollment (status stopped) and cancel nothing else: it has no action waiting."""

    type: Literal["stop"]
    reason: str | None = Field(default=None, max_length=200)


StepDoc = Annotated[
    AssignUserStep | ManualSmsStep | ManualCallStep | WaitStep | BranchStep | StopStep,
    Field(discriminator="type"),
]


def _inline_refs(schema: Any, defs: dict[str, Any]) -> Any:
    """The schema with local ``$ref``s replaced by their definitions (for a field's own schema)."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            return _inline_refs(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
        return {k: _inline_refs(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inline_refs(v, defs) for v in schema]
    return schema


def _step_items_schema() -> dict[str, Any]:
    generated = TypeAdapter(StepDoc).json_schema()
    inlined: dict[str, Any] = _inline_refs(generated, generated.get("$defs", {}))
    inlined.pop("discriminator", None)  # its mapping points at $defs that are inlined now
    return inlined


GOALS_DESCRIPTION = (
    "What ends an enrollment early (its awaited action is cancelled): `replied` (the contact sent an "
    "SMS), `opted_out` (SMS or call opt-out, by keyword or in the directory), `do_not_disturb`."
)
Goals = Annotated[
    list[str],
    Field(max_length=10, description=GOALS_DESCRIPTION, examples=[["replied", "opted_out"]]),
]


Steps = Annotated[
    list[dict[str, Any]],
    Field(
        max_length=MAX_STEPS,
        description="Step objects with 'id' and 'type' (shapes below); a draft may hold mistakes, "
        "publishing checks the whole graph and reports every problem.",
        json_schema_extra={"items": _step_items_schema()},
    ),
]


class WorkflowCreate(_Request):
    name: Name
    steps: Steps
    goals: Goals = Field(default_factory=list)


class WorkflowUpdate(_Request):
    """Replace the draft's steps; when the newest version is published this starts a new draft."""

    name: Name | None = None
    steps: Steps
    goals: Goals | None = Field(
        default=None, description="None keeps the current goals. " + GOALS_DESCRIPTION
    )


class VersionView(BaseModel):
    version: int
    status: str
    steps: list[dict[str, Any]]
    goals: list[str] = Field(default_factory=list, description=GOALS_DESCRIPTION)
    created_at: datetime
    published_at: datetime | None

    @classmethod
    def of(cls, version: WorkflowVersion) -> VersionView:
        return cls(
            version=version.number,
            status=version.status.value,
            steps=version.step_specs,
            goals=list(version.goals),
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
    goals: list[str] = Field(default_factory=list, description="Goals of the newest version.")
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
            goals=list(latest.goals),
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
    event: str = Field(
        description="enrolled, user_assigned, assignment_skipped, assignment_failed, action_queued, "
        "action_completed, action_deleted, action_skipped, action_expired, action_failed, timed_out, "
        "wait_started, wait_ended, branch_taken, goal_reached, completed, stopped."
    )
    detail: dict[str, Any] = Field(description="Why: ids, outcome, branch taken, wait end, reason.")


class EnrollmentView(BaseModel):
    id: uuid.UUID
    workflow_id: uuid.UUID
    workflow_version: int
    contact_id: uuid.UUID
    status: Literal["active", "waiting", "completed", "stopped"]
    current_step_id: str | None
    waiting_action_id: uuid.UUID | None
    last_outcome: str | None = Field(
        default=None, description="Outcome key of the latest manual action (what a branch routes on)."
    )
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
            last_outcome=enrollment.last_outcome,
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
