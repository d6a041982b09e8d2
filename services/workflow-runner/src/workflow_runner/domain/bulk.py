"""Bulk enrollment runs: many contacts entered into one published workflow version, all at once or
in drip batches, worked chunk by chunk so that a crash resumes after the last committed chunk.

Pure rules, no I/O. A run's targets (the contacts, in the order they are worked) are fixed when it
is submitted; ``position`` is the last target worked. Each chunk decides, per contact, to enroll
or to skip with a reason (``decide``) and moves the run on (``BulkRun.advance``).

Re-enrollment policies (a contact's earlier enrollments in the same workflow, any version):

* ``skip_if_active`` (default): skip a contact that is still going through the workflow.
* ``skip_if_enrolled_ever``: skip a contact that was ever enrolled in it.
* ``allow_reenrollment``: every contact enters; one still going through the workflow starts over
  (``restarted``): its running enrollment is stopped (its pending action cancelled) in the same
  transaction, since one contact never runs through one workflow twice at the same time (the
  database enforces it).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from workflow_runner.domain.errors import Conflict, InvalidField
from workflow_runner.domain.people import Contact

MAX_LISTED_CONTACTS = 100_000
MAX_BATCH_SIZE = 100_000
MAX_INTERVAL_SECONDS = 7 * 24 * 3600
DEFAULT_CHUNK = 1_000


class Delivery(StrEnum):
    ALL_AT_ONCE = "all_at_once"
    DRIP = "drip"


class Policy(StrEnum):
    SKIP_IF_ENROLLED_EVER = "skip_if_enrolled_ever"
    SKIP_IF_ACTIVE = "skip_if_active"
    ALLOW_REENROLLMENT = "allow_reenrollment"


class RunStatus(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"  # resumable
    CANCELLED = "cancelled"  # final; contacts not reached yet stay out
    DONE = "done"  # every target worked


class Outcome(StrEnum):
    ENROLLED = "enrolled"
    RESTARTED = "restarted"  # allow_reenrollment: its running enrollment stopped, a new one started
    SKIPPED_ACTIVE = "skipped_active"  # still going through the workflow
    SKIPPED_ENROLLED_BEFORE = "skipped_enrolled_before"  # policy skip_if_enrolled_ever
    SKIPPED_NOT_FOUND = "skipped_not_found"  # listed id unknown in the tenant, or deleted since

    @property
    def enters(self) -> bool:
        """The contact gets a new enrollment (counted as enrolled)."""
        return self in (Outcome.ENROLLED, Outcome.RESTARTED)


@dataclass(frozen=True)
class Target:
    """What was asked for: ``kind`` "filter" (``filter`` holds the contact listing's conditions) or
    "list" (explicit contact ids, stored as the run's targets)."""

    kind: str
    filter: Mapping[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "filter": dict(self.filter)}


@dataclass(frozen=True)
class Drip:
    batch_size: int
    interval: timedelta

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise InvalidField("delivery.batch_size", f"must be between 1 and {MAX_BATCH_SIZE}")
        seconds = self.interval.total_seconds()
        if seconds != int(seconds) or not 1 <= seconds <= MAX_INTERVAL_SECONDS:
            raise InvalidField(
                "delivery.interval_seconds", f"must be a whole number of seconds, 1 to {MAX_INTERVAL_SECONDS}"
            )


class RunFinished(Conflict):
    """The run is cancelled or done; it cannot be paused or resumed any more."""

    def __init__(self, run_id: uuid.UUID, status: RunStatus) -> None:
        super().__init__(f"bulk enrollment {run_id} is {status.value}")
        self.run_id = run_id
        self.status = status


class RequestIdReused(Conflict):
    """The request id names an earlier run that asked for something else."""

    def __init__(self, request_id: str, run_id: uuid.UUID) -> None:
        super().__init__(
            f"request_id {request_id!r} was used for a different bulk enrollment ({run_id})",
            field="request_id",
        )
        self.request_id = request_id
        self.run_id = run_id


@dataclass
class BulkRun:
    """One bulk enrollment run and its progress. ``skipped`` counts skips per ``Outcome`` value."""

    id: uuid.UUID
    tenant: str
    request_id: str
    fingerprint: str
    workflow_id: uuid.UUID
    workflow_version: int
    target: Target
    policy: Policy
    delivery: Delivery
    drip: Drip | None
    status: RunStatus
    total: int
    created_at: datetime
    updated_at: datetime
    position: int = 0
    batch_done: int = 0
    enrolled: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    next_due_at: datetime | None = None
    requested_by: uuid.UUID | None = None
    finished_at: datetime | None = None

    @property
    def worked(self) -> int:
        return self.enrolled + sum(self.skipped.values())

    def chunk_size(self, limit: int = DEFAULT_CHUNK) -> int:
        """How many targets the next chunk may take: at most ``limit``, and never past the end of
        the current drip batch."""
        if self.drip is None:
            return limit
        return max(1, min(limit, self.drip.batch_size - self.batch_done))

    def is_due(self, now: datetime) -> bool:
        return self.status is RunStatus.RUNNING and (self.next_due_at is None or self.next_due_at <= now)

    def advance(self, last_seq: int, outcomes: Mapping[Outcome, int], worked: int, now: datetime) -> None:
        """Record a committed chunk: ``worked`` targets up to ``last_seq`` with these outcomes.

        A drip batch that is complete schedules the next one ``interval`` after now; the run is done
        when the last target was worked.
        """
        self.position = last_seq
        for outcome, count in outcomes.items():
            if outcome.enters:
                self.enrolled += count
            elif count:
                self.skipped[outcome.value] = self.skipped.get(outcome.value, 0) + count
        self.updated_at = now
        if self.worked >= self.total or worked == 0:
            self.status = RunStatus.DONE
            self.finished_at = now
            self.next_due_at = None
            return
        if self.drip is not None:
            self.batch_done += worked
            if self.batch_done >= self.drip.batch_size:
                self.batch_done = 0
                self.next_due_at = now + self.drip.interval

    def pause(self, now: datetime) -> None:
        if self.status in (RunStatus.CANCELLED, RunStatus.DONE):
            raise RunFinished(self.id, self.status)
        self.status = RunStatus.PAUSED
        self.updated_at = now

    def resume(self, now: datetime) -> None:
        """Continue a paused run; its next chunk is due at once, or when its drip batch is due."""
        if self.status in (RunStatus.CANCELLED, RunStatus.DONE):
            raise RunFinished(self.id, self.status)
        self.status = RunStatus.RUNNING
        self.updated_at = now

    def cancel(self, now: datetime) -> None:
        """Stop for good; contacts already enrolled stay enrolled. Cancelling twice is a no-op."""
        if self.status is RunStatus.DONE:
            raise RunFinished(self.id, self.status)
        if self.status is not RunStatus.CANCELLED:
            self.status = RunStatus.CANCELLED
            self.finished_at = now
            self.next_due_at = None
            self.updated_at = now


@dataclass(frozen=True)
class TargetContact:
    """One target of a chunk (its contact locked) with what the database knows about its past in
    the run's workflow."""

    seq: int
    contact_id: uuid.UUID
    contact: Contact | None  # None: unknown in the tenant, or deleted
    running: bool  # an enrollment in the workflow is active or waiting
    enrolled_before: bool  # any enrollment in the workflow, running or finished


def decide(policy: Policy, *, exists: bool, running: bool, enrolled_before: bool) -> Outcome:
    """What a run does with one target contact, given what the database says about it."""
    if not exists:
        return Outcome.SKIPPED_NOT_FOUND
    if running:
        return Outcome.RESTARTED if policy is Policy.ALLOW_REENROLLMENT else Outcome.SKIPPED_ACTIVE
    if enrolled_before and policy is Policy.SKIP_IF_ENROLLED_EVER:
        return Outcome.SKIPPED_ENROLLED_BEFORE
    return Outcome.ENROLLED
