"""Errors the domain raises. Entrypoints translate them to problem+json; nothing here knows HTTP."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass


class DomainError(Exception):
    """Base of every rule violation the domain reports."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input. ``field`` is a path inside the input (``steps[1].message``)."""

    field: str
    message: str


class InvalidField(DomainError):
    """A single input field breaks a rule; ``field`` names it relative to the request body."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class InvalidFields(InvalidField):
    """Several fields of one input break rules; ``problems`` lists each (the first is also
    ``field``/``message``, so callers that want one error can treat this as InvalidField)."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__(problems[0].field, problems[0].message)
        self.problems = tuple(problems)


class Conflict(DomainError):
    """The change contradicts the current state (a duplicate name, a team that still has members).
    ``field`` names the input field involved, if one is."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(DomainError):
    """The tenant has no ``kind`` with this id (another tenant's rows are equally "not found")."""

    def __init__(self, kind: str, entity_id: uuid.UUID | str) -> None:
        super().__init__(f"{kind} {entity_id} not found")
        self.kind = kind
        self.entity_id = str(entity_id)


class WorkflowInvalid(DomainError):
    """Publishing failed; ``problems`` lists every problem found, not just the first."""

    def __init__(self, workflow_id: uuid.UUID, problems: Sequence[Problem]) -> None:
        super().__init__(f"workflow {workflow_id} has {len(problems)} problem(s)")
        self.workflow_id = workflow_id
        self.problems = tuple(problems)


class WorkflowNotPublished(DomainError):
    """Contacts can only enter a workflow that has a published version."""

    def __init__(self, workflow_id: uuid.UUID) -> None:
        super().__init__(f"workflow {workflow_id} has no published version")
        self.workflow_id = workflow_id


class AlreadyEnrolled(DomainError):
    """The contact is still going through this workflow (an enrollment is active or waiting)."""

    def __init__(self, workflow_id: uuid.UUID, contact_id: uuid.UUID, enrollment_id: uuid.UUID) -> None:
        super().__init__(f"contact {contact_id} is already enrolled in workflow {workflow_id}")
        self.workflow_id = workflow_id
        self.contact_id = contact_id
        self.enrollment_id = enrollment_id
