"""Workflows and their versions.

A workflow has numbered versions. The newest may be a draft that its author edits freely; publishing
validates it (every problem reported at once) and freezes it. Editing a workflow whose newest version
is published starts a new draft, so enrollments pinned to a published version never see it change.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from workflow_runner.domain.errors import DomainError, InvalidField, WorkflowInvalid
from workflow_runner.domain.steps import Step, StepSpec, parse_steps

MAX_WORKFLOW_NAME = 200


class VersionStatus(StrEnum):
    DRAFT = "draft"
    PUBLISHED = "published"


@dataclass(frozen=True)
class WorkflowVersion:
    """One version of a workflow's steps. Frozen; ``step_specs`` returns copies, so nothing outside
    can change a version after the fact (a published version is immutable)."""

    number: int
    status: VersionStatus
    _specs_json: str
    created_at: datetime
    published_at: datetime | None = None

    @classmethod
    def from_specs(
        cls,
        number: int,
        status: VersionStatus,
        specs: Sequence[StepSpec],
        created_at: datetime,
        published_at: datetime | None = None,
    ) -> WorkflowVersion:
        try:
            specs_json = json.dumps([dict(s) if isinstance(s, dict) else s for s in specs], sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise InvalidField("steps", f"must be JSON: {exc}") from exc
        return cls(number, status, specs_json, created_at, published_at)

    @property
    def step_specs(self) -> list[dict[str, Any]]:
        return copy.deepcopy(json.loads(self._specs_json))

    @property
    def is_published(self) -> bool:
        return self.status is VersionStatus.PUBLISHED

    def steps(self) -> tuple[Step, ...]:
        """Typed steps of a published version (validated when it was published)."""
        if not self.is_published:
            raise DomainError(f"version {self.number} is a draft; only published versions run")
        steps, problems = parse_steps(self.step_specs)
        if problems:  # cannot happen for a version that passed publish; guard against bad data
            raise DomainError(f"published version {self.number} is invalid: {problems[0].message}")
        return steps


def _clean_workflow_name(name: str) -> str:
    cleaned = " ".join(name.split())
    if not cleaned:
        raise InvalidField("name", "must not be empty")
    if len(cleaned) > MAX_WORKFLOW_NAME:
        raise InvalidField("name", f"is longer than {MAX_WORKFLOW_NAME} characters")
    return cleaned


@dataclass
class Workflow:
    """A named sequence of steps with versions, newest last."""

    id: uuid.UUID
    tenant: str
    name: str
    versions: list[WorkflowVersion] = field(default_factory=list)
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def create(
        cls,
        *,
        tenant: str,
        name: str,
        steps: Sequence[StepSpec],
        now: datetime,
        workflow_id: uuid.UUID | None = None,
    ) -> Workflow:
        """A new workflow whose version 1 is a draft holding ``steps`` as given (validated on publish)."""
        cleaned = _clean_workflow_name(name)
        draft = WorkflowVersion.from_specs(1, VersionStatus.DRAFT, steps, now)
        return cls(
            id=workflow_id or uuid.uuid4(),
            tenant=tenant,
            name=cleaned,
            versions=[draft],
            created_at=now,
            updated_at=now,
        )

    def rename(self, name: str, now: datetime) -> None:
        self.name = _clean_workflow_name(name)
        self.updated_at = now

    @property
    def latest(self) -> WorkflowVersion:
        return self.versions[-1]

    @property
    def draft(self) -> WorkflowVersion | None:
        return self.latest if not self.latest.is_published else None

    @property
    def published(self) -> WorkflowVersion | None:
        """The newest published version: the one new enrollments enter."""
        return next((v for v in reversed(self.versions) if v.is_published), None)

    def version(self, number: int) -> WorkflowVersion | None:
        return next((v for v in self.versions if v.number == number), None)

    def save_draft(self, steps: Sequence[StepSpec], now: datetime) -> WorkflowVersion:
        """Replace the draft's steps, or start draft N+1 when the newest version is published."""
        if self.draft is not None:
            latest = self.latest
            new = WorkflowVersion.from_specs(latest.number, VersionStatus.DRAFT, steps, latest.created_at)
            self.versions[-1] = new
        else:
            new = WorkflowVersion.from_specs(self.latest.number + 1, VersionStatus.DRAFT, steps, now)
            self.versions.append(new)
        self.updated_at = now
        return new

    def publish(self, known_user_ids: Collection[uuid.UUID], now: datetime) -> WorkflowVersion:
        """Validate the draft against the tenant's users and publish it.

        Raises WorkflowInvalid listing every problem. Publishing when the newest version is already
        published changes nothing and returns it (so a retried request is harmless).
        """
        draft = self.draft
        if draft is None:
            return self.latest
        _, problems = parse_steps(draft.step_specs, known_user_ids)
        if problems:
            raise WorkflowInvalid(self.id, problems)
        published = replace(draft, status=VersionStatus.PUBLISHED, published_at=now)
        self.versions[-1] = published
        self.updated_at = now
        return published
