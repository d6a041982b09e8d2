"""Bulk enrollment use cases: submit a run, look at it, pause/resume/cancel it, and work it one chunk
at a time (``run_chunk``, called by the bulk loop in ``entrypoints.bulk``).

A chunk is one transaction: the run row (claimed ``FOR UPDATE SKIP LOCKED``), the next targets'
contacts (locked, with the re-enrollment facts read in SQL), every new enrollment with its history,
manual action and ActionQueued event, changed contact owners with their ContactUpdated events, the
per-contact results and the run's new position all commit together. A crash before the commit
loses the chunk's work and the next claim does it again; a crash after it never repeats it.

Each contact runs through ``runner.start`` exactly as a single enrollment does (same domain code,
same rows); only the persistence is batched (COPY) and the ActionQueued documents are built from
one pydantic-made template per step instead of one model per action.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import operator
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from manual_actions.contracts.topics import ACTION_LIFECYCLE, CONTACTS
from manual_actions.faults import crash_point
from workflow_runner import metrics
from workflow_runner.domain import runner
from workflow_runner.domain.bulk import (
    DEFAULT_CHUNK,
    BulkRun,
    Delivery,
    Drip,
    Outcome,
    Policy,
    RequestIdReused,
    RunStatus,
    Target,
    TargetContact,
    decide,
)
from workflow_runner.domain.enrollments import Enrollment, HistoryEntry, ManualAction
from workflow_runner.domain.errors import NotFound, WorkflowNotPublished
from workflow_runner.domain.people import Contact
from workflow_runner.domain.steps import AssignUser, Step
from workflow_runner.domain.workflows import WorkflowVersion
from workflow_runner.handlers import handlers
from workflow_runner.handlers.directory import contact_updated_documents
from workflow_runner.handlers.goals import apply_effects
from workflow_runner.handlers.ports import ContactFilter, UnitOfWork

log = logging.getLogger(__name__)

#: Crash points of the chunk (``manual_actions.faults``): everything written, transaction open ...
BULK_BEFORE_COMMIT = "bulk.before-commit"
#: ... and the chunk committed, the loop not yet on to the next one.
BULK_AFTER_COMMIT = "bulk.after-commit"

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


class BulkRepository(Protocol):
    """Storage of bulk enrollment runs (``adapters.bulk_sql``); tenant-scoped like every repository."""

    async def add_if_absent(
        self, run: BulkRun, *, filters: ContactFilter | None, contact_ids: Sequence[uuid.UUID] | None
    ) -> tuple[BulkRun, bool]: ...
    async def get(self, tenant: str, run_id: uuid.UUID, *, for_update: bool = False) -> BulkRun | None: ...
    async def claim_due(self, now: datetime) -> BulkRun | None: ...
    async def next_due_at(self) -> datetime | None: ...
    async def save(self, run: BulkRun) -> None: ...
    async def targets(
        self, tenant: str, run_id: uuid.UUID, workflow_id: uuid.UUID, after: int, limit: int
    ) -> list[TargetContact]: ...
    async def store_chunk(
        self,
        run: BulkRun,
        now: datetime,
        enrollments: Sequence[Enrollment],
        actions: Sequence[ManualAction],
        results: Iterable[tuple[uuid.UUID, Outcome, uuid.UUID | None]],
        changed_contacts: Sequence[Contact],
    ) -> None: ...
    async def stage_events(self, topic: str, documents: Sequence[dict[str, Any]]) -> None:
        """``UnitOfWork.publish_documents``, faster for large chunks."""
        ...

    async def results(
        self, tenant: str, run_id: uuid.UUID, *, outcome: str | None, after: uuid.UUID | None, limit: int
    ) -> list[tuple[uuid.UUID, str, uuid.UUID | None, datetime]]: ...


class BulkUnitOfWork(UnitOfWork, Protocol):
    bulk: BulkRepository


@dataclass(frozen=True)
class SubmitBulk:
    tenant: str
    workflow_id: uuid.UUID
    request_id: str
    filters: ContactFilter | None
    contact_ids: Sequence[uuid.UUID] | None
    policy: Policy = Policy.SKIP_IF_ACTIVE
    drip: Drip | None = None
    requested_by: uuid.UUID | None = None

    def fingerprint(self) -> str:
        """A hash of everything the request asks for (not the request id), to tell a retry of the
        same request from a different request that reuses the id."""
        document = {
            "workflow_id": str(self.workflow_id),
            "filters": dataclasses.asdict(self.filters) if self.filters else None,
            "contact_ids": [str(c) for c in self.contact_ids] if self.contact_ids is not None else None,
            "policy": self.policy.value,
            "drip": [self.drip.batch_size, self.drip.interval.total_seconds()] if self.drip else None,
        }
        return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()


async def submit(uow: BulkUnitOfWork, cmd: SubmitBulk, *, clock: Clock = utcnow) -> tuple[BulkRun, bool]:
    """Record a run and its targets; returns (run, created). The same request id again returns the
    run recorded first (created False) when the request is the same, and raises RequestIdReused when
    it asks for something else. Raises NotFound (workflow) and WorkflowNotPublished; the newest
    published version is pinned for the whole run."""
    now = clock()
    fingerprint = cmd.fingerprint()
    async with uow:
        workflow = await uow.workflows.get(cmd.tenant, cmd.workflow_id)
        if workflow is None:
            raise NotFound("workflow", cmd.workflow_id)
        version = workflow.published
        if version is None:
            raise WorkflowNotPublished(workflow.id)
        run = BulkRun(
            id=uuid.uuid4(),
            tenant=cmd.tenant,
            request_id=cmd.request_id,
            fingerprint=fingerprint,
            workflow_id=workflow.id,
            workflow_version=version.number,
            target=Target(
                kind="list" if cmd.contact_ids is not None else "filter",
                filter={k: str(v) for k, v in dataclasses.asdict(cmd.filters).items() if v is not None}
                if cmd.filters
                else {},
            ),
            policy=cmd.policy,
            delivery=Delivery.DRIP if cmd.drip else Delivery.ALL_AT_ONCE,
            drip=cmd.drip,
            status=RunStatus.RUNNING,
            total=0,
            created_at=now,
            updated_at=now,
            next_due_at=now,
            requested_by=cmd.requested_by,
        )
        stored, created = await uow.bulk.add_if_absent(run, filters=cmd.filters, contact_ids=cmd.contact_ids)
        await uow.commit()
    if not created and stored.fingerprint != fingerprint:
        raise RequestIdReused(cmd.request_id, stored.id)
    if created:
        log.info(
            "bulk enrollment submitted",
            extra={"tenant": cmd.tenant, "run_id": str(stored.id), "total": stored.total},
        )
    return stored, created


async def get_run(uow: BulkUnitOfWork, tenant: str, run_id: uuid.UUID) -> BulkRun:
    async with uow:
        run = await uow.bulk.get(tenant, run_id)
    if run is None:
        raise NotFound("bulk_enrollment", run_id)
    return run


async def list_results(
    uow: BulkUnitOfWork,
    tenant: str,
    run_id: uuid.UUID,
    *,
    outcome: str | None = None,
    after: uuid.UUID | None = None,
    limit: int = 100,
) -> list[tuple[uuid.UUID, str, uuid.UUID | None, datetime]]:
    """What the run did with each contact worked so far: (contact id, outcome, enrollment id, at)."""
    async with uow:
        if await uow.bulk.get(tenant, run_id) is None:
            raise NotFound("bulk_enrollment", run_id)
        return await uow.bulk.results(tenant, run_id, outcome=outcome, after=after, limit=limit)


async def change_status(
    uow: BulkUnitOfWork, tenant: str, run_id: uuid.UUID, change: str, *, clock: Clock = utcnow
) -> BulkRun:
    """``change`` is "pause", "resume" or "cancel". Waits for a chunk in flight (row lock), so once
    this returns no further chunk of the run starts unless resumed."""
    async with uow:
        run = await uow.bulk.get(tenant, run_id, for_update=True)
        if run is None:
            raise NotFound("bulk_enrollment", run_id)
        getattr(run, change)(clock())
        await uow.bulk.save(run)
        await uow.commit()
    return run


# --- working a chunk ------------------------------------------------------------------------------


class _PreparedVersion(WorkflowVersion):
    """A published version whose steps are parsed once per chunk instead of once per contact."""

    _parsed: tuple[Step, ...] | None = None

    def steps(self) -> tuple[Step, ...]:
        if self._parsed is None:
            object.__setattr__(self, "_parsed", super().steps())
        assert self._parsed is not None
        return self._parsed


def _prepared(version: WorkflowVersion) -> WorkflowVersion:
    fields = {f.name: getattr(version, f.name) for f in dataclasses.fields(version)}
    return _PreparedVersion(**fields)


# Fields of a ManualAction that differ per contact; every other field is the same for every action
# of one step in one chunk, so one pydantic-made ActionQueued document serves them all as template.
_PER_ACTION = (
    "id",
    "enrollment_id",
    "contact_id",
    "contact_name",
    "contact_phone",
    "assignee_user_id",
    "message",
    "notes",
)
_SHARED = tuple(f.name for f in dataclasses.fields(ManualAction) if f.name not in _PER_ACTION)


_shared_key = operator.attrgetter(*_SHARED)

# The bits ``uuid.UUID(..., version=4)`` sets: RFC 4122 variant and version 4.
_V4_CLEAR = ~((0xC000 << 48) | (0xF000 << 64))
_V4_SET = (0x8000 << 48) | (4 << 76)


def _uuid_of(value: int) -> uuid.UUID:
    """``uuid.UUID(int=value)`` without its argument checks (``value`` is a valid 128-bit int),
    which cost more than the rest of making an id; the same two slots ``UUID.__init__`` sets."""
    made = object.__new__(uuid.UUID)
    object.__setattr__(made, "int", value)
    object.__setattr__(made, "is_safe", uuid.SafeUUID.unknown)
    return made


def random_ids(batch: int = 4096) -> Callable[[], uuid.UUID]:
    """A source of random (version 4) UUIDs like ``uuid.uuid4``, reading the system's random bytes
    for ``batch`` ids at a time: one ``os.urandom`` call per id costs more than the rest of an
    enrollment's id handling on a loaded machine."""
    values: list[int] = []

    def new_id() -> uuid.UUID:
        if not values:
            buffer = os.urandom(16 * batch)
            values.extend(
                (int.from_bytes(buffer[i : i + 16], "big") & _V4_CLEAR) | _V4_SET
                for i in range(0, len(buffer), 16)
            )
        return _uuid_of(values.pop())

    return new_id


class ActionQueuedDocuments:
    """ActionQueued envelopes (as JSON documents) for many actions, equal to
    ``handlers.action_queued(action).to_jsonable()`` apart from the envelope id.

    The first action of each distinct set of shared fields goes through ``handlers.action_queued``;
    the others copy that document and replace the per-contact values. A per-contact value the real
    function does not carry through verbatim (say, a notes field it leaves out) is kept as the
    template has it, so the result never differs from the real function's.
    """

    def __init__(self, new_id: Callable[[], uuid.UUID] = uuid.uuid4) -> None:
        self._templates: dict[tuple[Any, ...], tuple[dict[str, Any], set[str]]] = {}
        self._new_id = new_id

    def __call__(self, action: ManualAction) -> dict[str, Any]:
        key = _shared_key(action)
        cached = self._templates.get(key)
        if cached is None:
            document = handlers.action_queued(action).to_jsonable()
            data = document["data"]
            verbatim = {
                name for name in ("message", "notes") if name in data and data[name] == getattr(action, name)
            }
            self._templates[key] = (document, verbatim)
            return document
        template, verbatim = cached
        data = dict(template["data"])
        action_id = str(action.id)
        data["action_id"] = action_id
        data["enrollment_id"] = str(action.enrollment_id)
        data["contact"] = {
            **data["contact"],
            "contact_id": str(action.contact_id),
            "name": action.contact_name,
            "phone": action.contact_phone,
        }
        data["assignee_user_id"] = str(action.assignee_user_id) if action.assignee_user_id else None
        for name in verbatim:
            data[name] = getattr(action, name)
        return {**template, "id": str(self._new_id()), "subject": action_id, "data": data}


def _fast_path(result: runner.RunResult) -> bool:
    """Whether the batch writer knows every effect of this run (else the single-enrollment
    persistence is used for this contact)."""
    known = (runner.ActionRequested, runner.ContactAssigned, runner.EnrollmentCompleted)
    return all(isinstance(event, known) for event in result.events)


def _mark_bulk(enrollment: Enrollment, run: BulkRun) -> None:
    """Name the run in the enrollment's "enrolled" history entry (the contact's history shows it)."""
    first = enrollment.history[0]
    enrollment.history[0] = HistoryEntry(
        step_id=first.step_id,
        at=first.at,
        event=first.event,
        detail={**first.detail, "bulk_enrollment_id": str(run.id)},
    )


async def _stop_running(uow: BulkUnitOfWork, run: BulkRun, contact_id: uuid.UUID, now: datetime) -> None:
    """allow_reenrollment: stop the contact's running enrollment in the workflow (its pending
    action cancelled through CancelAction), so that the new one can start in this transaction."""
    running = await uow.enrollments.running_for(run.tenant, run.workflow_id, contact_id)
    if running is None:  # cannot happen under the contact's row lock; nothing to stop then
        return
    stopped = runner.stop(running, now, reason=f"re-enrolled by bulk enrollment {run.id}")
    await uow.enrollments.save(running)
    await apply_effects(uow, stopped, now, causation_id=None)


async def run_chunk(
    uow: BulkUnitOfWork,
    *,
    clock: Clock = utcnow,
    chunk: int = DEFAULT_CHUNK,
    new_id: Callable[[], uuid.UUID] | None = None,
) -> BulkRun | None:
    """Work the next chunk of the run that is due soonest; None when no run is due. ``new_id``
    makes the ids of enrollments, actions and events (default: ``random_ids()``)."""
    started = time.perf_counter()
    new_id = new_id or random_ids()
    async with uow:
        now = clock()
        run = await uow.bulk.claim_due(now)
        if run is None:
            return None
        workflow = await uow.workflows.get(run.tenant, run.workflow_id)
        pinned = workflow.version(run.workflow_version) if workflow else None
        if workflow is None or pinned is None:
            raise RuntimeError(f"bulk enrollment {run.id} refers to a missing workflow version")
        version = _prepared(pinned)
        steps = version.steps()
        targets = await uow.bulk.targets(
            run.tenant, run.id, run.workflow_id, run.position, run.chunk_size(chunk)
        )
        loaded = time.perf_counter()
        outcomes: Counter[Outcome] = Counter()
        results: list[tuple[uuid.UUID, Outcome, uuid.UUID | None]] = []
        to_enroll: list[Contact] = []
        restarted: set[uuid.UUID] = set()
        for target in targets:
            outcome = decide(
                run.policy,
                exists=target.contact is not None,
                running=target.running,
                enrolled_before=target.enrolled_before,
            )
            outcomes[outcome] += 1
            if outcome.enters:
                assert target.contact is not None
                to_enroll.append(target.contact)
                if outcome is Outcome.RESTARTED:
                    restarted.add(target.contact_id)
            else:
                results.append((target.contact_id, outcome, None))
        users_wanted = {u for s in steps if isinstance(s, AssignUser) for u in s.user_ids}
        users_wanted |= {
            s.fallback_user_id for s in steps if isinstance(s, AssignUser) and s.fallback_user_id
        }
        users_wanted |= {c.owner_user_id for c in to_enroll if c.owner_user_id is not None}
        users = await uow.users.get_many(run.tenant, users_wanted, include_deleted=True)
        assigns = any(isinstance(s, AssignUser) for s in steps)
        round_robin = await uow.round_robin.load(run.tenant, workflow.id, for_update=True) if assigns else {}
        enrollments: list[Enrollment] = []
        actions: list[ManualAction] = []
        changed: list[Contact] = []
        for contact_id in sorted(restarted):
            await _stop_running(uow, run, contact_id, now)
        for contact in to_enroll:
            enrollment = Enrollment.start(
                tenant=run.tenant,
                contact_id=contact.id,
                workflow_id=workflow.id,
                workflow_version=version.number,
                now=now,
                enrollment_id=new_id(),
            )
            _mark_bulk(enrollment, run)
            ctx = runner.RunContext(
                workflow_name=workflow.name,
                version=version,
                contact=contact,
                users=users,
                round_robin=round_robin,
                now=now,
                new_id=new_id,
            )
            result = runner.start(enrollment, ctx)
            outcome = Outcome.RESTARTED if contact.id in restarted else Outcome.ENROLLED
            results.append((contact.id, outcome, enrollment.id))
            if not _fast_path(result):
                # An effect the batch writer does not know (a timer, say): store this one the way a
                # single enrollment is stored, in the same transaction.
                await uow.enrollments.add(enrollment)
                await handlers._apply(uow, workflow.id, ctx, result, causation_id=None)
                continue
            enrollments.append(enrollment)
            if result.action is not None:
                actions.append(result.action)
            if result.contact_changed:
                changed.append(contact)
        ran = time.perf_counter()
        await uow.bulk.store_chunk(run, now, enrollments, actions, results, changed)
        if changed:
            await uow.round_robin.save(run.tenant, workflow.id, round_robin)
            await uow.bulk.stage_events(CONTACTS, contact_updated_documents(changed))
        if actions:
            documents = ActionQueuedDocuments(new_id)
            await uow.bulk.stage_events(ACTION_LIFECYCLE, [documents(a) for a in actions])
        run.advance(targets[-1].seq if targets else run.position, outcomes, len(targets), now)
        await uow.bulk.save(run)
        stored = time.perf_counter()
        crash_point(BULK_BEFORE_COMMIT)
        await uow.commit()
    crash_point(BULK_AFTER_COMMIT)
    metrics.ENROLLMENTS_STARTED.inc(outcomes[Outcome.ENROLLED])
    for action in actions:
        metrics.ACTIONS_QUEUED.labels(action.action_type.value).inc()
    log.info(
        "bulk enrollment chunk committed",
        extra={
            "tenant": run.tenant,
            "run_id": str(run.id),
            "worked": len(targets),
            "enrolled": outcomes[Outcome.ENROLLED],
            "position": run.position,
            "status": run.status.value,
            "seconds": round(time.perf_counter() - started, 3),
            # Where the time went: claim + targets + users, running the contacts through the
            # runner (and building their events), writing (COPY), commit.
            "load_s": round(loaded - started, 3),
            "run_s": round(ran - loaded, 3),
            "store_s": round(stored - ran, 3),
        },
    )
    return run


async def next_due(uow: BulkUnitOfWork) -> datetime | None:
    """When the soonest running run's next chunk is due (None: no run is running)."""
    async with uow:
        return await uow.bulk.next_due_at()
