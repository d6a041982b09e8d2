"""Workflow step types and their validation.

A draft stores each step as the JSON object the author sent (``StepSpec``), so a draft can hold
mistakes; ``parse_steps`` turns specs into typed steps and reports every problem at once, which
is what publishing relies on. To add a step type: add its dataclass, a parser in ``_PARSERS``
and its behaviour in ``runner``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from workflow_runner.domain.errors import Problem
from workflow_runner.domain.templates import Template, parse_template

StepSpec = Mapping[str, Any]

STEP_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_STEPS = 100
MAX_ACTION_NAME = 200
MAX_SMS_LENGTH = 1600
MAX_NOTES_LENGTH = 2000
MAX_ROUND_ROBIN_USERS = 100


class StepType(StrEnum):
    ASSIGN_USER = "assign_user"
    MANUAL_SMS = "manual_sms"
    MANUAL_CALL = "manual_call"


@dataclass(frozen=True)
class AssignUser:
    """Make one of ``user_ids`` the contact's owner, by smooth weighted round robin
    (``weights``, aligned with ``user_ids``; all 1 when not given). With ``only_unassigned``, a
    contact that already has an owner keeps it. Users away or out of office are skipped, and so
    are users outside their working hours when ``respect_working_hours``. When nobody is left,
    ``fallback_user_id`` gets the contact if set; otherwise it is left as it was."""

    id: str
    user_ids: tuple[uuid.UUID, ...]
    only_unassigned: bool = False
    weights: tuple[int, ...] = ()
    respect_working_hours: bool = False
    fallback_user_id: uuid.UUID | None = None
    type: StepType = StepType.ASSIGN_USER

    def weight_of(self, index: int) -> int:
        return self.weights[index] if self.weights else 1


@dataclass(frozen=True)
class ManualSms:
    """Queue an SMS for the contact's owner to review, edit and send. Never sent automatically."""

    id: str
    action_name: str
    message: Template
    type: StepType = StepType.MANUAL_SMS


@dataclass(frozen=True)
class ManualCall:
    """Queue a call for the contact's owner; ``notes`` (merge fields allowed) guide the caller."""

    id: str
    action_name: str
    notes: Template | None = None
    type: StepType = StepType.MANUAL_CALL


Step = AssignUser | ManualSms | ManualCall
ManualStep = ManualSms | ManualCall


class _Reader:
    """Reads fields of one spec, recording problems under ``steps[i].<field>``."""

    def __init__(self, spec: StepSpec, index: int, allowed: Collection[str], problems: list[Problem]) -> None:
        self.spec = spec
        self.prefix = f"steps[{index}]"
        self.problems = problems
        for key in spec:
            if key not in allowed and key not in ("id", "type"):
                self.problem(key, f"unknown field for a {spec.get('type')} step")

    def problem(self, field: str, message: str) -> None:
        self.problems.append(Problem(f"{self.prefix}.{field}", message))

    def text(self, field: str, *, max_length: int, required: bool = True) -> str | None:
        value = self.spec.get(field)
        if value is None:
            if required:
                self.problem(field, "is required")
            return None
        if not isinstance(value, str):
            self.problem(field, "must be a string")
            return None
        if required and not value.strip():
            self.problem(field, "must not be empty")
            return None
        if len(value) > max_length:
            self.problem(field, f"is longer than {max_length} characters")
            return None
        return value

    def template(self, field: str, *, max_length: int, required: bool = True) -> Template | None:
        source = self.text(field, max_length=max_length, required=required)
        if source is None:
            return None
        template = parse_template(source)
        for message in template.problems:
            self.problem(field, message)
        return template

    def flag(self, field: str) -> bool:
        value = self.spec.get(field, False)
        if not isinstance(value, bool):
            self.problem(field, "must be true or false")
            return False
        return value


def _parse_assign_user(r: _Reader, step_id: str, known_user_ids: Collection[uuid.UUID] | None) -> Step | None:
    raw_ids = r.spec.get("user_ids")
    only_unassigned = r.flag("only_unassigned")
    if not isinstance(raw_ids, list) or not raw_ids:
        r.problem("user_ids", "must be a non-empty list of user ids")
        return None
    if len(raw_ids) > MAX_ROUND_ROBIN_USERS:
        r.problem("user_ids", f"at most {MAX_ROUND_ROBIN_USERS} users")
        return None
    user_ids: list[uuid.UUID] = []
    ok = True
    for position, raw in enumerate(raw_ids):
        try:
            user_id = uuid.UUID(str(raw))
        except ValueError:
            r.problem(f"user_ids[{position}]", f"{str(raw)[:60]!r} is not a user id")
            ok = False
            continue
        if user_id in user_ids:
            r.problem(f"user_ids[{position}]", f"user {user_id} is listed twice")
            ok = False
        elif known_user_ids is not None and user_id not in known_user_ids:
            r.problem(f"user_ids[{position}]", f"user {user_id} does not exist")
            ok = False
        user_ids.append(user_id)
    weights = _weights(r, len(raw_ids))
    respect_working_hours = r.flag("respect_working_hours")
    fallback: uuid.UUID | None = None
    raw_fallback = r.spec.get("fallback_user_id")
    if raw_fallback is not None:
        try:
            fallback = uuid.UUID(str(raw_fallback))
        except ValueError:
            r.problem("fallback_user_id", f"{str(raw_fallback)[:60]!r} is not a user id")
            ok = False
        else:
            if known_user_ids is not None and fallback not in known_user_ids:
                r.problem("fallback_user_id", f"user {fallback} does not exist")
                ok = False
    if not ok or weights is None:
        return None
    return AssignUser(
        id=step_id,
        user_ids=tuple(user_ids),
        only_unassigned=only_unassigned,
        weights=weights,
        respect_working_hours=respect_working_hours,
        fallback_user_id=fallback,
    )


MAX_WEIGHT = 1000


def _weights(r: _Reader, count: int) -> tuple[int, ...] | None:
    """``weights``: one positive integer per user (uneven round robin); () when absent."""
    raw = r.spec.get("weights")
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) != count:
        r.problem("weights", "must be a list with one weight per user in user_ids")
        return None
    weights: list[int] = []
    for position, value in enumerate(raw):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WEIGHT:
            r.problem(f"weights[{position}]", f"must be a whole number from 1 to {MAX_WEIGHT}")
            return None
        weights.append(value)
    return tuple(weights)


def _parse_manual_sms(r: _Reader, step_id: str, _known: Collection[uuid.UUID] | None) -> Step | None:
    action_name = r.text("action_name", max_length=MAX_ACTION_NAME)
    message = r.template("message", max_length=MAX_SMS_LENGTH)
    if action_name is None or message is None or message.problems:
        return None
    return ManualSms(id=step_id, action_name=action_name.strip(), message=message)


def _parse_manual_call(r: _Reader, step_id: str, _known: Collection[uuid.UUID] | None) -> Step | None:
    action_name = r.text("action_name", max_length=MAX_ACTION_NAME)
    notes = r.template("notes", max_length=MAX_NOTES_LENGTH, required=False)
    if action_name is None or (notes is not None and notes.problems):
        return None
    return ManualCall(id=step_id, action_name=action_name.strip(), notes=notes)


_Parser = Callable[[_Reader, str, Collection[uuid.UUID] | None], Step | None]
_PARSERS: dict[StepType, tuple[_Parser, frozenset[str]]] = {
    StepType.ASSIGN_USER: (
        _parse_assign_user,
        frozenset({"user_ids", "only_unassigned", "weights", "respect_working_hours", "fallback_user_id"}),
    ),
    StepType.MANUAL_SMS: (_parse_manual_sms, frozenset({"action_name", "message"})),
    StepType.MANUAL_CALL: (_parse_manual_call, frozenset({"action_name", "notes"})),
}


def parse_steps(
    specs: Sequence[StepSpec], known_user_ids: Collection[uuid.UUID] | None = None
) -> tuple[tuple[Step, ...], list[Problem]]:
    """Typed steps for ``specs`` and every problem found in them.

    ``known_user_ids`` are the tenant's users; when given, an Assign User step naming anyone else
    is a problem. The steps are only meaningful when the problem list is empty.
    """
    problems: list[Problem] = []
    steps: list[Step] = []
    if not specs:
        problems.append(Problem("steps", "a workflow needs at least one step"))
    if len(specs) > MAX_STEPS:
        problems.append(Problem("steps", f"at most {MAX_STEPS} steps"))
    seen_ids: set[str] = set()
    for index, spec in enumerate(specs):
        prefix = f"steps[{index}]"
        if not isinstance(spec, Mapping):
            problems.append(Problem(prefix, "must be an object"))
            continue
        step_id = spec.get("id")
        if not isinstance(step_id, str) or not STEP_ID.match(step_id):
            problems.append(Problem(f"{prefix}.id", "must be 1-64 letters, digits, '_' or '-'"))
            step_id = None
        elif step_id in seen_ids:
            problems.append(Problem(f"{prefix}.id", f"step id {step_id!r} is used twice"))
        else:
            seen_ids.add(step_id)
        raw_type = spec.get("type")
        if raw_type is None:
            problems.append(Problem(f"{prefix}.type", "is required"))
            continue
        try:
            step_type = StepType(str(raw_type))
        except ValueError:
            expected = ", ".join(t.value for t in StepType)
            shown = str(raw_type)[:60]
            problems.append(Problem(f"{prefix}.type", f"unknown step type {shown!r} (expected {expected})"))
            continue
        parser, allowed = _PARSERS[step_type]
        step = parser(_Reader(spec, index, allowed, problems), step_id or "", known_user_ids)
        if step is not None and step_id is not None:
            steps.append(step)
    return tuple(steps), problems


def referenced_user_ids(specs: Sequence[StepSpec]) -> set[uuid.UUID]:
    """Every well-formed user id that Assign User specs mention (for loading the users to check)."""
    found: set[uuid.UUID] = set()
    for spec in specs:
        if isinstance(spec, Mapping) and spec.get("type") == StepType.ASSIGN_USER:
            raw_ids = spec.get("user_ids")
            mentioned = list(raw_ids) if isinstance(raw_ids, list) else []
            if spec.get("fallback_user_id") is not None:
                mentioned.append(spec["fallback_user_id"])
            for raw in mentioned:
                try:
                    found.add(uuid.UUID(str(raw)))
                except ValueError:
                    continue
    return found
