"""Workflow step types and their validation.

A draft stores each step as the JSON object the author sent (``StepSpec``), so a draft can hold
mistakes; ``parse_steps`` turns specs into typed steps and reports every problem at once, which
is what publishing relies on. To add a step type: add its dataclass, a parser in ``_PARSERS``
and its behaviour in ``runner``.

The steps form a graph (decision 0013). Every step may name its successor in ``next`` (a step id
or ``"end"``); without it the successor is the next step of the list (``"end"`` after the last).
``branch`` steps route on the outcome of the enrollment's latest manual action, manual steps may
carry a ``timeout`` with its own target, and ``stop`` ends the enrollment. ``graph`` checks the
whole graph (dangling ids, unreachable steps, loops without a wait, branches without a preceding
manual step) and ``StepGraph`` walks it at run time.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

from workflow_runner.domain.errors import Problem
from workflow_runner.domain.templates import Template, parse_template
from workflow_runner.domain.timing import TimeWindow, parse_duration

StepSpec = Mapping[str, Any]

STEP_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_STEPS = 100
MAX_ACTION_NAME = 200
MAX_SMS_LENGTH = 1600
MAX_NOTES_LENGTH = 2000
MAX_ROUND_ROBIN_USERS = 100
MAX_STOP_REASON = 200
END = "end"
"""A ``next``/branch/timeout target meaning "the enrollment completes here"."""
OUTCOME_KEY = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
STANDARD_OUTCOMES: tuple[str, ...] = (
    "sms_sent",
    "connected",
    "no_answer",
    "voicemail",
    "busy",
    "skipped",
    "expired",
    "deleted",
    "failed",
    "timed_out",
)
"""Outcome keys a branch may route on; any other lower-case slug is a tenant's custom call outcome."""
DEFAULT_BRANCH = "default"


class StepType(StrEnum):
    ASSIGN_USER = "assign_user"
    MANUAL_SMS = "manual_sms"
    MANUAL_CALL = "manual_call"
    WAIT = "wait"
    BRANCH = "branch"
    STOP = "stop"


@dataclass(frozen=True)
class Timeout:
    """If the step's action is not finished ``after`` it was queued, the enrollment goes on to
    ``then`` (a step id or ``end``) with outcome ``timed_out``; ``cancel`` asks action-queue to
    remove the action (CancelAction), otherwise it stays in the queue but nobody waits on it."""

    after: timedelta
    then: str
    cancel: bool


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
    next: str | None = None
    type: StepType = StepType.ASSIGN_USER

    def weight_of(self, index: int) -> int:
        return self.weights[index] if self.weights else 1


@dataclass(frozen=True)
class ManualSms:
    """Queue an SMS for the contact's owner to review, edit and send. Never sent automatically."""

    id: str
    action_name: str
    message: Template
    next: str | None = None
    priority: int = 0
    due_in: timedelta | None = None
    expires_in: timedelta | None = None
    timeout: Timeout | None = None
    type: StepType = StepType.MANUAL_SMS


@dataclass(frozen=True)
class ManualCall:
    """Queue a call for the contact's owner; ``notes`` (merge fields allowed) guide the caller."""

    id: str
    action_name: str
    notes: Template | None = None
    next: str | None = None
    priority: int = 0
    due_in: timedelta | None = None
    expires_in: timedelta | None = None
    timeout: Timeout | None = None
    type: StepType = StepType.MANUAL_CALL


@dataclass(frozen=True)
class Wait:
    """Pause the enrollment: first ``duration`` (if given), then until the next moment inside
    ``window`` in the contact's time zone (if given; UTC for a contact without one)."""

    id: str
    duration: timedelta | None = None
    window: TimeWindow | None = None
    next: str | None = None
    type: StepType = StepType.WAIT


@dataclass(frozen=True)
class Branch:
    """Route on the outcome of the enrollment's latest manual action: ``routes`` maps an outcome
    key (``STANDARD_OUTCOMES`` or a custom call outcome) or ``default`` to a step id or ``end``.
    An outcome with no route and no ``default`` continues at the step's successor."""

    id: str
    routes: tuple[tuple[str, str], ...]
    next: str | None = None
    type: StepType = StepType.BRANCH

    def route(self, outcome: str | None) -> tuple[str | None, str]:
        """(target, the key that matched: the outcome, ``default`` or ``next``); target None means
        "the step's successor"."""
        table = dict(self.routes)
        if outcome is not None and outcome in table:
            return table[outcome], outcome
        if DEFAULT_BRANCH in table:
            return table[DEFAULT_BRANCH], DEFAULT_BRANCH
        return None, "next"


@dataclass(frozen=True)
class Stop:
    """End the enrollment here (status stopped) with ``reason``."""

    id: str
    reason: str = "stop step reached"
    type: StepType = StepType.STOP

    @property
    def next(self) -> str | None:
        return END


Step = AssignUser | ManualSms | ManualCall | Wait | Branch | Stop
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

    def duration(self, field: str, value: Any) -> timedelta | None:
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.problem(field, str(exc))
            return None

    def target(self, field: str, value: Any) -> str | None:
        """A step id or ``end`` (whether the id exists is checked over the whole graph)."""
        if not isinstance(value, str) or not (value == END or STEP_ID.match(value)):
            self.problem(field, f"must be a step id or {END!r}")
            return None
        return value

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
        next=_next(r),
    )


def _next(r: _Reader) -> str | None:
    raw = r.spec.get("next")
    return None if raw is None else r.target("next", raw)


MAX_PRIORITY = 100


def _manual_options(r: _Reader) -> dict[str, Any] | None:
    """``next``, ``priority``, ``due_in``, ``expires_in`` and ``timeout`` of a manual step."""
    ok = True
    options: dict[str, Any] = {"next": _next(r)}
    priority = r.spec.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= MAX_PRIORITY:
        r.problem("priority", f"must be a whole number from 0 to {MAX_PRIORITY}")
        ok = False
    options["priority"] = priority
    for name in ("due_in", "expires_in"):
        if r.spec.get(name) is not None:
            options[name] = r.duration(name, r.spec[name])
            ok = ok and options[name] is not None
    if options.get("due_in") and options.get("expires_in") and options["expires_in"] <= options["due_in"]:
        r.problem("expires_in", "must be longer than due_in")
        ok = False
    raw = r.spec.get("timeout")
    if raw is not None:
        if not isinstance(raw, Mapping):
            r.problem(
                "timeout", 'must be an object {"after": <duration>, "then": <step id|end>, "action": ...}'
            )
            return None
        for key in raw:
            if key not in ("after", "then", "action"):
                r.problem(f"timeout.{key}", "unknown field (expected after, then, action)")
                ok = False
        after = r.duration("timeout.after", raw.get("after"))
        then = r.target("timeout.then", raw.get("then"))
        action = raw.get("action", "keep")
        if action not in ("cancel", "keep"):
            r.problem("timeout.action", "must be 'cancel' or 'keep'")
            ok = False
        if after is None or then is None:
            return None
        options["timeout"] = Timeout(after=after, then=then, cancel=action == "cancel")
    if r.spec.get("next") is not None and options["next"] is None:
        ok = False
    return options if ok else None


def _parse_wait(r: _Reader, step_id: str, _known: Collection[uuid.UUID] | None) -> Step | None:
    raw_duration, raw_until = r.spec.get("duration"), r.spec.get("until")
    if raw_duration is None and raw_until is None:
        r.problem("duration", "a wait needs a duration, an 'until' window, or both")
        return None
    duration = r.duration("duration", raw_duration) if raw_duration is not None else None
    window: TimeWindow | None = None
    if raw_until is not None:
        if not isinstance(raw_until, Mapping):
            r.problem("until", 'must be an object {"days": [...], "start": "HH:MM", "end": "HH:MM"}')
            return None
        for key in raw_until:
            if key not in ("days", "start", "end"):
                r.problem(f"until.{key}", "unknown field (expected days, start, end)")
        try:
            window = TimeWindow.parse(raw_until.get("days"), raw_until.get("start"), raw_until.get("end"))
        except ValueError as exc:
            r.problem("until", str(exc))
            return None
    if raw_duration is not None and duration is None:
        return None
    next_step = _next(r)
    if r.spec.get("next") is not None and next_step is None:
        return None
    return Wait(id=step_id, duration=duration, window=window, next=next_step)


def _parse_branch(r: _Reader, step_id: str, _known: Collection[uuid.UUID] | None) -> Step | None:
    raw = r.spec.get("on")
    if not isinstance(raw, Mapping) or not raw:
        r.problem("on", "must be an object mapping outcomes (sms_sent, connected, ..., default) to step ids")
        return None
    routes: list[tuple[str, str]] = []
    ok = True
    for key, value in raw.items():
        if not isinstance(key, str) or not OUTCOME_KEY.match(key):
            r.problem(f"on.{key}", "an outcome is a lower-case word such as connected or no_answer")
            ok = False
            continue
        target = r.target(f"on.{key}", value)
        if target is None:
            ok = False
            continue
        routes.append((key, target))
    next_step = _next(r)
    if not ok or (r.spec.get("next") is not None and next_step is None):
        return None
    return Branch(id=step_id, routes=tuple(routes), next=next_step)


def _parse_stop(r: _Reader, step_id: str, _known: Collection[uuid.UUID] | None) -> Step | None:
    reason = r.text("reason", max_length=MAX_STOP_REASON, required=False)
    if r.spec.get("reason") is not None and reason is None:
        return None
    return Stop(id=step_id, reason=reason.strip() if reason and reason.strip() else Stop.reason)


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
    options = _manual_options(r)
    if action_name is None or message is None or message.problems or options is None:
        return None
    return ManualSms(id=step_id, action_name=action_name.strip(), message=message, **options)


def _parse_manual_call(r: _Reader, step_id: str, _known: Collection[uuid.UUID] | None) -> Step | None:
    action_name = r.text("action_name", max_length=MAX_ACTION_NAME)
    notes = r.template("notes", max_length=MAX_NOTES_LENGTH, required=False)
    options = _manual_options(r)
    if action_name is None or (notes is not None and notes.problems) or options is None:
        return None
    return ManualCall(id=step_id, action_name=action_name.strip(), notes=notes, **options)


_Parser = Callable[[_Reader, str, Collection[uuid.UUID] | None], Step | None]
_MANUAL_OPTIONS = frozenset({"next", "priority", "due_in", "expires_in", "timeout"})
_PARSERS: dict[StepType, tuple[_Parser, frozenset[str]]] = {
    StepType.ASSIGN_USER: (
        _parse_assign_user,
        frozenset(
            {"user_ids", "only_unassigned", "weights", "respect_working_hours", "fallback_user_id", "next"}
        ),
    ),
    StepType.MANUAL_SMS: (_parse_manual_sms, frozenset({"action_name", "message"}) | _MANUAL_OPTIONS),
    StepType.MANUAL_CALL: (_parse_manual_call, frozenset({"action_name", "notes"}) | _MANUAL_OPTIONS),
    StepType.WAIT: (_parse_wait, frozenset({"duration", "until", "next"})),
    StepType.BRANCH: (_parse_branch, frozenset({"on", "next"})),
    StepType.STOP: (_parse_stop, frozenset({"reason"})),
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
        elif step_id == END:
            problems.append(Problem(f"{prefix}.id", f"{END!r} is reserved (it means: the workflow ends)"))
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
    if specs and len(specs) <= MAX_STEPS:
        from workflow_runner.domain.graph import check_graph  # graph imports this module

        problems.extend(check_graph(specs, steps, seen_ids))
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
