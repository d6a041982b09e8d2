"""Commands (requests to change state) and incoming events, as small dataclasses.

Each carries its tenant, taken by the entrypoint from the caller's token or the event envelope.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from workflow_runner.domain.people import CustomValue, UserRole
from workflow_runner.domain.runner import FinishKind


@dataclass(frozen=True)
class CreateUser:
    tenant: str
    name: str
    phone: str
    role: UserRole
    team_id: uuid.UUID | None = None
    timezone: str | None = None
    availability: Mapping[str, Any] | None = None
    working_hours: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class CreateContact:
    tenant: str
    name: str | None
    phone: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    timezone: str | None = None
    custom_fields: Mapping[str, CustomValue] = field(default_factory=dict)
    owner_user_id: uuid.UUID | None = None
    tags: Sequence[str] = ()
    opted_out: Mapping[str, Any] | None = None
    do_not_disturb: Mapping[str, Any] | None = None
    external_id: str | None = None


@dataclass(frozen=True)
class CreateWorkflow:
    tenant: str
    name: str
    steps: Sequence[Mapping[str, Any]]
    goals: Sequence[str] = ()


@dataclass(frozen=True)
class SaveDraft:
    tenant: str
    workflow_id: uuid.UUID
    steps: Sequence[Mapping[str, Any]]
    name: str | None = None
    goals: Sequence[str] | None = None  # None: keep the current goals


@dataclass(frozen=True)
class PublishWorkflow:
    tenant: str
    workflow_id: uuid.UUID


@dataclass(frozen=True)
class Enroll:
    tenant: str
    workflow_id: uuid.UUID
    contact_id: uuid.UUID


@dataclass(frozen=True)
class ActionFinished:
    """An event from action-queue saying an action left the queue (ActionCompleted, ActionDeleted,
    ActionSkipped, ActionExpired, ActionFailed), reduced to what we need. Only completed and
    deleted carry the enrollment and step; the others are found by action id."""

    message_id: uuid.UUID
    tenant: str
    kind: FinishKind
    action_id: uuid.UUID
    enrollment_id: uuid.UUID | None
    step_id: str | None
    at: datetime
    outcome: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class ReplyReceived:
    """An SmsReceived event: a contact's SMS (or opt-out/opt-in keyword) to the tenant's number."""

    message_id: uuid.UUID
    tenant: str
    from_phone: str
    keyword: str | None
    body: str
    at: datetime
