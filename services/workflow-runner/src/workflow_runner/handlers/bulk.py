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

import contextlib
import dataclasses
import gc
import hashlib
import json
import logging
import operator
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from manual_actions.contracts.topics import ACTION_LIFECYCLE, CONTACTS
from manual_actions.faults import crash_point
from manual_actions.templates import split_name
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
from workflow_runner.domain.enrollments import ActionType, Enrollment, HistoryEntry, ManualAction
from workflow_runner.domain.errors import NotFound, WorkflowNotPublished
from workflow_runner.domain.people import Contact, User
from workflow_runner.domain.steps import AssignUser, ManualCall, ManualSms, ManualStep, Step
from workflow_runner.domain.templates import CUSTOM_PREFIX, Template, merge_values, render
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
        *,
        enrollment_rows: Sequence[tuple[Any, ...]] = (),
        history_rows: Sequence[tuple[Any, ...]] = (),
        action_rows: Sequence[tuple[Any, ...]] = (),
    ) -> None: ...
    async def stage_events(self, topic: str, documents: Sequence[dict[str, Any]]) -> None:
        """``UnitOfWork.publish_documents``, faster for large chunks."""
        ...

    async def stage_envelopes(
        self,
        topic: str,
        tenant: str,
        message_type: str,
        version: int,
        envelopes: Sequence[tuple[str, str]],
    ) -> None:
        """Stage envelopes already in JSON text, (subject, text), of one tenant, type and version."""
        ...

    @property
    def rows(self) -> BulkRows: ...

    async def results(
        self, tenant: str, run_id: uuid.UUID, *, outcome: str | None, after: uuid.UUID | None, limit: int
    ) -> list[tuple[uuid.UUID, str, uuid.UUID | None, datetime]]: ...


class BulkRows(Protocol):
    """How the repository's COPY rows look (``adapters.bulk_sql.RowFormat``): the regular path's
    row builders and where the per-contact values sit, for the lean path."""

    enrollment_slots: tuple[int, ...]  # id, contact_id, waiting_action_id
    action_slots: Mapping[str, int]  # column name -> position

    def enrollment(self, e: Enrollment, run_id: uuid.UUID) -> tuple[Any, ...]: ...
    def history(self, e: Enrollment) -> list[tuple[Any, ...]]: ...
    def action(self, a: ManualAction) -> tuple[Any, ...]: ...
    def jsonb(self, value: Any) -> str: ...
    def folded_history(
        self,
        tenant: str,
        enrollment_id: Any,
        at: datetime,
        entries: Sequence[tuple[str | None, str, dict[str, Any]]],
    ) -> tuple[Any, ...]: ...
    def history_of(self, row: tuple[Any, ...]) -> list[tuple[str | None, datetime, str, dict[str, Any]]]: ...


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


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def random_text_ids(batch: int = 4096) -> Callable[[], str]:
    """Like ``random_ids``, the ids as their canonical text (what the lean path writes: the
    database driver takes text for a uuid column and the envelopes need the text anyway)."""
    texts: list[str] = []

    def new_text_id() -> str:
        if not texts:
            raw = os.urandom(16 * batch).hex()
            texts.extend(
                f"{raw[i : i + 8]}-{raw[i + 8 : i + 12]}-4{raw[i + 13 : i + 16]}-"
                f"{_VARIANT[raw[i + 16]]}{raw[i + 17 : i + 20]}-{raw[i + 20 : i + 32]}"
                for i in range(0, len(raw), 32)
            )
        return texts.pop()

    return new_text_id


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
        return _queued_document(
            template,
            event_id=str(self._new_id()),
            action_id=str(action.id),
            enrollment_id=str(action.enrollment_id),
            contact_id=str(action.contact_id),
            name=action.contact_name,
            phone=action.contact_phone,
            assignee=str(action.assignee_user_id) if action.assignee_user_id else None,
            texts={name: getattr(action, name) for name in verbatim},
        )


def _queued_document(
    template: dict[str, Any],
    *,
    event_id: str,
    action_id: str,
    enrollment_id: str,
    contact_id: str,
    name: str,
    phone: str | None,
    assignee: str | None,
    texts: Mapping[str, str | None],
) -> dict[str, Any]:
    """Another contact's ActionQueued document made from ``template`` (a real one of the same run
    and step): its per-contact values replaced, ``texts`` (message or notes) set as given."""
    data = dict(template["data"])
    data["action_id"] = action_id
    data["enrollment_id"] = enrollment_id
    data["contact"] = {**data["contact"], "contact_id": contact_id, "name": name, "phone": phone}
    data["assignee_user_id"] = assignee
    data.update(texts)
    return {**template, "id": event_id, "subject": action_id, "data": data}


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
    makes the ids of enrollments, actions and events (default: ``random_ids``)."""
    started = time.perf_counter()
    # A smaller refill than random_ids' default: on the lean path a chunk takes only its probe's
    # ids from here (its other ids come as text from random_text_ids).
    new_id = new_id or random_ids(batch=512)
    with collector_paused():
        return await _run_chunk(uow, clock=clock, chunk=chunk, new_id=new_id, started=started)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector (process-wide) for the block, then restore it.

    Why: a chunk allocates some 100,000 container objects (row tuples, lists, dicts) that live until
    it commits; the collector's passes triggered by them (over them and every older object) cost
    20 to 40 µs of CPU per contact, a quarter of the chunk's Python. A chunk makes no reference cycles
    worth collecting, and whatever other tasks leave behind meanwhile is collected after the block
    (a chunk takes well under a second)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


async def _run_chunk(
    uow: BulkUnitOfWork,
    *,
    clock: Clock,
    chunk: int,
    new_id: Callable[[], uuid.UUID],
    started: float,
) -> BulkRun | None:
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
        lean: LeanChunk | None = None
        step = lean_step(version)
        if step is not None and to_enroll:
            lean = LeanChunk(run, workflow.name, version, step, users, now, new_id, uow.bulk.rows)
            probe = to_enroll[0]
            enrollment_id = lean.start(probe)
            if enrollment_id is None:
                lean = None
            else:
                for contact in to_enroll:
                    if contact is not probe:
                        enrollment_id = lean.add(contact)
                    if contact.id in restarted:  # the enrolled are found through their enrollment
                        results.append((contact.id, Outcome.RESTARTED, uuid.UUID(enrollment_id)))
                to_enroll = []
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
            if not _fast_path(result):
                # An effect the batch writer does not know (a timer, say): store this one the way a
                # single enrollment is stored, in the same transaction, with its result row.
                results.append((contact.id, outcome, enrollment.id))
                await uow.enrollments.add(enrollment)
                await handlers._apply(uow, workflow.id, ctx, result, causation_id=None)
                continue
            if outcome is Outcome.RESTARTED:  # the enrolled are found through their enrollment
                results.append((contact.id, outcome, enrollment.id))
            enrollments.append(enrollment)
            if result.action is not None:
                actions.append(result.action)
            if result.contact_changed:
                changed.append(contact)
        ran = time.perf_counter()
        await uow.bulk.store_chunk(
            run,
            now,
            enrollments,
            actions,
            results,
            changed,
            enrollment_rows=lean.enrollment_rows if lean else (),
            history_rows=lean.history_rows if lean else (),
            action_rows=lean.action_rows if lean else (),
        )
        if lean is not None:
            await uow.bulk.stage_envelopes(
                ACTION_LIFECYCLE, run.tenant, lean.message_type, lean.message_version, lean.events
            )
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
    if lean is not None:
        metrics.ACTIONS_QUEUED.labels(lean.action_type).inc(len(lean.action_rows))
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


# --- the lean path ---------------------------------------------------------------------------------


def lean_step(version: WorkflowVersion) -> ManualStep | None:
    """The version's first step when its enrollments can take the lean path: a Manual SMS or Call
    without a timeout is the first step, so ``runner.start`` only records "enrolled", queues that
    one action (history "action_queued") and leaves the enrollment waiting on it: no assignment,
    no timer, nothing else that differs between contacts beyond the action's own values."""
    graph = version.graph()
    first = graph.step(graph.first) if graph.first is not None else None
    if isinstance(first, ManualSms | ManualCall) and first.timeout is None:
        return first
    return None


class _Renderer:
    """``render(template, merge_values(contact, user))`` for one template, computing only the
    values the template names (the assignee's values once per user). A template naming a custom
    field goes through ``merge_values`` itself."""

    def __init__(self, template: Template) -> None:
        self._template = template
        self._fields = set(template.fields)
        self._general = any(name.startswith(CUSTOM_PREFIX) for name in self._fields)
        self._users: dict[uuid.UUID | None, dict[str, str]] = {}

    def __call__(self, contact: Contact, user: User | None) -> str:
        if self._general:
            return render(self._template, merge_values(contact, user))
        key = user.id if user is not None else None
        values = self._users.get(key)
        if values is None:
            everything = merge_values(contact, user)
            values = self._users[key] = {k: v for k, v in everything.items() if k.startswith("user.")}
        values = dict(values)
        fields = self._fields
        if fields & _NAME_FIELDS:
            name = contact.name or ""
            first, last = split_name(name)
            values["contact.name"] = name
            values["contact.first_name"] = contact.first_name or first
            values["contact.last_name"] = contact.last_name or last
        if "contact.phone" in fields:
            values["contact.phone"] = contact.phone or ""
        if "contact.email" in fields:
            values["contact.email"] = contact.email or ""
        return render(self._template, values)


_NAME_FIELDS = frozenset({"contact.name", "contact.first_name", "contact.last_name"})


class LeanChunk:
    """The rows and ActionQueued outbox values of a chunk's enrollments into a ``lean_step``
    version, built as tuples and JSON text without per-contact domain objects.

    The first contact (the probe) goes through exactly what the regular path does
    (``Enrollment.start``, ``runner.start``, the row builders, ``handlers.action_queued``); every
    other contact's rows are the probe's with the per-contact values replaced. ``start`` refuses
    (returns None) when the probe's real rows differ from what the lean path makes for the probe
    itself, and the caller then takes the regular path: the lean path never writes something the
    regular one would not. Differences in form only: ids as text (the driver takes either), and the
    "enrolled" and "action_queued" history entries in one row (``BulkRows.folded_history``, read
    back as the two entries).
    """

    def __init__(
        self,
        run: BulkRun,
        workflow_name: str,
        version: WorkflowVersion,
        step: ManualStep,
        users: Mapping[uuid.UUID, User],
        now: datetime,
        new_id: Callable[[], uuid.UUID],
        rows: BulkRows,
        new_text_id: Callable[[], str] | None = None,
    ) -> None:
        self._rows = rows
        self._slots = rows.enrollment_slots
        self._a = rows.action_slots
        self._run = run
        self._workflow_name = workflow_name
        self._version = version
        self._step = step
        self._users = users
        self._now = now
        self._new_id = new_id
        self._new_text_id = new_text_id or random_text_ids()
        self._sms = isinstance(step, ManualSms)
        template = step.message if isinstance(step, ManualSms) else step.notes
        self._render = _Renderer(template) if template is not None else None
        self.action_type = (ActionType.SMS if self._sms else ActionType.CALL).value
        self.message_type = ""
        self.message_version = 0
        self.enrollment_rows: list[tuple[Any, ...]] = []
        self.history_rows: list[tuple[Any, ...]] = []
        self.action_rows: list[tuple[Any, ...]] = []
        self.events: list[tuple[str, str]] = []  # (subject, envelope JSON text)
        self._enrollment: list[Any] = []
        self._action: list[Any] = []
        self._enrolled: dict[str, Any] = {}
        self._document: dict[str, Any] = {}

    def start(self, probe: Contact) -> str | None:
        """Enroll the probe contact through the regular domain code and take its rows as the
        templates; returns its enrollment id, or None when the lean rows would differ."""
        run, now = self._run, self._now
        enrollment = Enrollment.start(
            tenant=run.tenant,
            contact_id=probe.id,
            workflow_id=run.workflow_id,
            workflow_version=self._version.number,
            now=now,
            enrollment_id=self._new_id(),
        )
        _mark_bulk(enrollment, run)
        ctx = runner.RunContext(
            workflow_name=self._workflow_name,
            version=self._version,
            contact=probe,
            users=self._users,
            round_robin={},
            now=now,
            new_id=self._new_id,
        )
        result = runner.start(enrollment, ctx)
        action = result.action
        if action is None or not _fast_path(result) or result.contact_changed or len(enrollment.history) != 2:
            return None
        document = handlers.action_queued(action).to_jsonable()
        rows = self._rows
        real_enrollment = rows.enrollment(enrollment, run.id)
        real_history = rows.history(enrollment)
        real_action = rows.action(action)
        self._enrollment = list(real_enrollment)
        self._action = list(real_action)
        self._enrolled = dict(enrollment.history[0].detail)  # the same for every contact of the run
        self._document = document
        self.message_type, self.message_version = document["type"], int(document["version"])
        enrollment_id = self.add(probe, ids=(str(enrollment.id), str(action.id), document["id"]))
        made_history = [entry for row in self.history_rows for entry in rows.history_of(row)]
        if (
            _comparable(self.enrollment_rows) != _comparable([real_enrollment])
            or made_history != [entry for row in real_history for entry in rows.history_of(row)]
            or _comparable(self.action_rows) != _comparable([real_action])
            or self.events[0][0] != document["subject"]
            or orjson.loads(self.events[0][1]) != orjson.loads(rows.jsonb(document))
        ):
            log.warning("bulk enrollment lean path disagrees with the runner; regular path taken")
            return None
        return enrollment_id

    def add(self, contact: Contact, *, ids: tuple[str, str, str] | None = None) -> str:
        """Enroll one more contact (as ``runner.start`` would); returns its enrollment id."""
        if ids is None:
            new = self._new_text_id
            ids = (new(), new(), new())
        enrollment_id, action_id, event_id = ids
        tenant, now = self._run.tenant, self._now
        assignee = contact.owner_user_id
        text = (
            self._render(contact, self._users.get(assignee) if assignee is not None else None)
            if self._render is not None
            else None
        )
        row = self._enrollment.copy()
        e_id, e_contact, e_waiting = self._slots
        row[e_id], row[e_contact], row[e_waiting] = enrollment_id, contact.id, action_id
        self.enrollment_rows.append(tuple(row))
        action = self._action.copy()
        slot = self._a
        action[slot["id"]] = action_id
        action[slot["enrollment_id"]] = enrollment_id
        action[slot["contact_id"]] = contact.id
        action[slot["contact_name"]] = contact.name
        action[slot["contact_phone"]] = contact.phone
        action[slot["assignee_user_id"]] = assignee
        action[slot["message" if self._sms else "notes"]] = text
        self.action_rows.append(tuple(action))
        assignee_text = str(assignee) if assignee is not None else None
        detail: dict[str, Any] = {
            "action_id": action_id,
            "action_type": self.action_type,
            "assignee_user_id": assignee_text,
        }
        if contact.phone is None:
            detail["warning"] = "the contact has no valid phone number"
        self.history_rows.append(
            self._rows.folded_history(
                tenant,
                enrollment_id,
                now,
                [(None, "enrolled", self._enrolled), (self._step.id, "action_queued", detail)],
            )
        )
        document = _queued_document(
            self._document,
            event_id=event_id,
            action_id=action_id,
            enrollment_id=enrollment_id,
            contact_id=str(contact.id),
            name=contact.name,
            phone=contact.phone,
            assignee=assignee_text,
            texts={"message" if self._sms else "notes": text},
        )
        self.events.append((action_id, self._rows.jsonb(document)))
        return enrollment_id


def _comparable(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows with ids as text and JSON text parsed (the driver takes an id either way; jsonb keeps
    the value, not the spelling)."""
    return [
        tuple(
            str(v)
            if isinstance(v, uuid.UUID)
            else orjson.loads(v)
            if isinstance(v, str) and v[:1] in "{["
            else v
            for v in row
        )
        for row in rows
    ]
