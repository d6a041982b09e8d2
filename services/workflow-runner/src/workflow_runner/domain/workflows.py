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
from functools import cached_property
from typing import Any

from workflow_runner.domain.errors import DomainError, InvalidField, Problem, WorkflowInvalid
from workflow_runner.domain.graph import StepGraph
from workflow_runner.domain.steps import Step, StepSpec, parse_steps

MAX_WORKFLOW_NAME = 200


class Goal(StrEnum):
    """Something the contact does that ends the enrollment (decision 0013): ``replied`` (an SMS
    from the contact's number), ``opted_out`` (SMS or call opt-out, by keyword or through the
    directory), ``do_not_disturb`` (a person paused a channel for the contact)."""

    REPLIED = "replied"
    OPTED_OUT = "opted_out"
    DO_NOT_DISTURB = "do_not_disturb"


MAX_GOALS = 10


def clean_goals(raw: object) -> tuple[str, ...]:
    """A draft's goals as given (a list of strings; checked against ``Goal`` on publish)."""
    if raw is None:
        return ()
    if not isinstance(raw, list | tuple) or not all(isinstance(g, str) for g in raw) or len(raw) > MAX_GOALS:
        raise InvalidField("goals", f"must be a list of at most {MAX_GOALS} goal names")
    return tuple(dict.fromkeys(raw))


def goal_problems(goals: Sequence[str]) -> list[Problem]:
    known = ", ".join(g.value for g in Goal)
    return [
        Problem(f"goals[{i}]", f"unknown goal {g[:40]!r} (expected {known})")
        for i, g in enumerate(goals)
        if g not in {x.value for x in Goal}
    ]


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
    goals: tuple[str, ...] = ()

    @classmethod
    def from_specs(
        cls,
        number: int,
        status: VersionStatus,
        specs: Sequence[StepSpec],
        created_at: datetime,
        published_at: datetime | None = None,
        goals: Sequence[str] = (),
    ) -> WorkflowVersion:
        try:
            specs_json = json.dumps([dict(s) if isinstance(s, dict) else s for s in specs], sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise InvalidField("steps", f"must be JSON: {exc}") from exc
        return cls(number, status, specs_json, created_at, published_at, tuple(goals))

    @property
    def step_specs(self) -> list[dict[str, Any]]:
        return copy.deepcopy(json.loads(self._specs_json))

    @property
    def is_published(self) -> bool:
        return self.status is VersionStatus.PUBLISHED

    def steps(self) -> tuple[Step, ...]:
        """Typed steps of a published version (validated when it was published)."""
        return self.graph().steps

    def graph(self) -> StepGraph:
        """The step graph of a published version, parsed once per version object."""
        return self._graph

    @cached_property
    def _graph(self) -> StepGraph:
        if not self.is_published:
            raise DomainError(f"version {self.number} is a draft; only published versions run")
        steps, problems = parse_steps(self.step_specs)
        if problems:  # cannot happen for a version that passed publish; guard against bad data
            raise DomainError(f"published version {self.number} is invalid: {problems[0].message}")
        return StepGraph(steps)


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
        goals: Sequence[str] = (),
    ) -> Workflow:
        """A new workflow whose version 1 is a draft holding ``steps`` and ``goals`` as given
        (validated on publish)."""
        cleaned = _clean_workflow_name(name)
        draft = WorkflowVersion.from_specs(1, VersionStatus.DRAFT, steps, now, goals=clean_goals(list(goals)))
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

    def save_draft(
        self, steps: Sequence[StepSpec], now: datetime, goals: Sequence[str] | None = None
    ) -> WorkflowVersion:
        """Replace the draft's steps, or start draft N+1 when the newest version is published.
        ``goals`` None keeps the newest version's goals."""
        kept = self.latest.goals if goals is None else clean_goals(list(goals))
        if self.draft is not None:
            latest = self.latest
            new = WorkflowVersion.from_specs(
                latest.number, VersionStatus.DRAFT, steps, latest.created_at, goals=kept
            )
            self.versions[-1] = new
        else:
            new = WorkflowVersion.from_specs(
                self.latest.number + 1, VersionStatus.DRAFT, steps, now, goals=kept
            )
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
        problems.extend(goal_problems(draft.goals))
        if problems:
            raise WorkflowInvalid(self.id, problems)
        published = replace(draft, status=VersionStatus.PUBLISHED, published_at=now)
        self.versions[-1] = published
        self.updated_at = now
        return published
