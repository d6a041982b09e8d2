"""PostgreSQL side of bulk enrollment: the runs, their target snapshots and results, and the batch
writes of one chunk (COPY for enrollments, history, manual actions and results).

The single-enrollment repositories in ``adapters.sql`` stay the reference for how an enrollment or
an action is stored; the row builders below take their column lists from there, so both paths
write the same rows.
"""

from __future__ import annotations

import operator
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import func, insert, literal, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import RowMapping

from manual_actions.db import driver_connection
from manual_actions.outbox import OUTBOX_COPY_COLUMNS, batch_record, notify_outbox
from workflow_runner.adapters import sql
from workflow_runner.adapters import tables as t
from workflow_runner.domain.bulk import (
    BulkRun,
    Delivery,
    Drip,
    Outcome,
    Policy,
    RunStatus,
    Target,
    TargetContact,
)
from workflow_runner.domain.enrollments import Enrollment, EnrollmentStatus, ManualAction
from workflow_runner.domain.people import Contact
from workflow_runner.handlers.ports import ContactFilter

RUNNING = (EnrollmentStatus.ACTIVE.value, EnrollmentStatus.WAITING.value)


def _run(row: RowMapping) -> BulkRun:
    drip = None
    if row["delivery"] == Delivery.DRIP.value:
        drip = Drip(row["batch_size"], timedelta(seconds=row["interval_seconds"]))
    target = row["target"]
    return BulkRun(
        id=row["id"],
        tenant=row["tenant_id"],
        request_id=row["request_id"],
        fingerprint=row["fingerprint"],
        workflow_id=row["workflow_id"],
        workflow_version=row["workflow_version"],
        target=Target(kind=target["kind"], filter=target.get("filter") or {}),
        policy=Policy(row["policy"]),
        delivery=Delivery(row["delivery"]),
        drip=drip,
        status=RunStatus(row["status"]),
        total=row["total"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        position=row["position"],
        batch_done=row["batch_done"],
        enrolled=row["enrolled"],
        skipped=dict(row["skipped"]),
        next_due_at=row["next_due_at"],
        requested_by=row["requested_by"],
        finished_at=row["finished_at"],
    )


def _progress(run: BulkRun) -> dict[str, Any]:
    return {
        "status": run.status.value,
        "total": run.total,
        "position": run.position,
        "batch_done": run.batch_done,
        "enrolled": run.enrolled,
        "skipped": run.skipped,
        "next_due_at": run.next_due_at,
        "updated_at": run.updated_at,
        "finished_at": run.finished_at,
    }


def _jsonb(value: Any) -> str:
    """JSON text for a jsonb column. orjson: the standard library's encoder was a tenth of a chunk's
    CPU time (the column stores the parsed value, so the spelling of the text does not matter)."""
    return orjson.dumps(value).decode()


ENROLLMENT_COLUMNS = (
    "tenant_id",
    "id",
    "contact_id",
    "workflow_id",
    "created_at",
    *sql.SqlEnrollmentRepository._state(
        Enrollment.start(
            tenant="x",
            contact_id=uuid.UUID(int=0),
            workflow_id=uuid.UUID(int=0),
            workflow_version=1,
            now=datetime.min,
        )
    ),
    "bulk_enrollment_id",
)
ACTION_COLUMNS = ("tenant_id", "id", "action_type", "status", *sql._ACTION_FIELDS)
_action_fields = operator.attrgetter(*sql._ACTION_FIELDS)
HISTORY_COLUMNS = ("tenant_id", "enrollment_id", "step_id", "at", "event", "detail")
RESULT_COLUMNS = ("tenant_id", "run_id", "contact_id", "outcome", "enrollment_id", "at")


def _enrollment_record(e: Enrollment, run_id: uuid.UUID) -> tuple[Any, ...]:
    values = {
        "tenant_id": e.tenant,
        "id": e.id,
        "contact_id": e.contact_id,
        "workflow_id": e.workflow_id,
        "created_at": e.created_at,
        **sql.SqlEnrollmentRepository._state(e),
        "bulk_enrollment_id": run_id,
    }
    return tuple(values[name] for name in ENROLLMENT_COLUMNS)


def _history_records(e: Enrollment) -> list[tuple[Any, ...]]:
    return [(e.tenant, e.id, h.step_id, h.at, h.event.value, _jsonb(h.detail)) for h in e.history]


def _action_record(a: ManualAction) -> tuple[Any, ...]:
    return (a.tenant, a.id, a.action_type.value, a.status.value, *_action_fields(a))


class RowFormat:
    """How a chunk's rows look in COPY (``handlers.bulk.BulkRows``): the builders the regular path
    uses, and where the per-contact values sit in them, so the lean path can copy a row and replace
    those values."""

    enrollment = staticmethod(_enrollment_record)
    history = staticmethod(_history_records)
    action = staticmethod(_action_record)
    jsonb = staticmethod(_jsonb)
    enrollment_slots = tuple(ENROLLMENT_COLUMNS.index(n) for n in ("id", "contact_id", "waiting_action_id"))
    action_slots = {name: index for index, name in enumerate(ACTION_COLUMNS)}

    @staticmethod
    def folded_history(
        tenant: str,
        enrollment_id: Any,
        at: datetime,
        entries: Sequence[tuple[str | None, str, dict[str, Any]]],
    ) -> tuple[Any, ...]:
        """One history row holding ``entries`` (step id, event, detail) of one moment, read back
        as those entries (``sql.history_entries``): one row instead of one per entry."""
        (step_id, event, detail), *rest = entries
        if rest:
            folded = [{"step_id": s, "event": e, "detail": d} for s, e, d in rest]
            detail = {**detail, sql.FOLDED_HISTORY: folded}
        return (tenant, enrollment_id, step_id, at, event, _jsonb(detail))

    @staticmethod
    def history_of(row: tuple[Any, ...]) -> list[tuple[str | None, datetime, str, dict[str, Any]]]:
        """The entries a history row stands for: (step id, at, event, detail)."""
        _, _, step_id, at, event, detail = row
        return [
            (h.step_id, h.at, h.event.value, h.detail)
            for h in sql.history_entries(step_id, at, event, orjson.loads(detail))
        ]


_TARGETS = """
    SELECT seq, contact_id FROM bulk_enrollment_targets
    WHERE tenant_id = $1 AND run_id = $2 AND seq > $3
    ORDER BY seq
    LIMIT $4
"""
# The contacts of a chunk, locked, with their past in the workflow ($3). Through the driver:
# SQLAlchemy's row processing (arrays, JSON) cost more than the query itself at 1,000 rows.
_TARGET_CONTACTS = """
    SELECT c.tenant_id, c.id, c.name, c.first_name, c.last_name, c.phone, c.email, c.timezone,
        c.owner_user_id, c.created_at, c.updated_at, c.tags, c.opted_out_sms, c.opted_out_call,
        c.dnd_sms, c.dnd_call, c.external_id, c.version, c.deleted_at,
        -- as text, and only when there is something in it: decoding an empty object per contact
        -- through the connection's JSON codec cost a tenth of a chunk's CPU
        CASE WHEN c.custom_fields = '{}'::jsonb THEN NULL ELSE c.custom_fields::text END AS custom_fields,
        EXISTS (SELECT 1 FROM enrollments e WHERE e.tenant_id = c.tenant_id AND e.workflow_id = $3
                AND e.contact_id = c.id AND e.status IN ('active', 'waiting')) AS bulk_running,
        EXISTS (SELECT 1 FROM enrollments e WHERE e.tenant_id = c.tenant_id AND e.workflow_id = $3
                AND e.contact_id = c.id) AS bulk_ever
    FROM contacts c
    WHERE c.tenant_id = $1 AND c.id = ANY($2::uuid[]) AND c.deleted_at IS NULL
    ORDER BY c.id
    FOR UPDATE OF c
"""


def _contact_of(record: Any) -> Contact:
    """``sql._contact`` for a record of ``_TARGET_CONTACTS`` (custom fields as JSON text or NULL)."""
    row = dict(record)
    custom = row["custom_fields"]
    row["custom_fields"] = orjson.loads(custom) if custom is not None else {}
    return sql._contact(row)  # type: ignore[arg-type]


class SqlBulkRepository(sql._Repository):
    rows = RowFormat()

    async def add_if_absent(
        self, run: BulkRun, *, filters: ContactFilter | None, contact_ids: Sequence[uuid.UUID] | None
    ) -> tuple[BulkRun, bool]:
        """Store ``run`` and its targets (the filter's contacts now, oldest first, or the listed ids
        in the given order, duplicates dropped) and set ``total``; or, when the tenant already has a
        run under this request id, return that one untouched. Returns (run, created)."""
        values = {
            "tenant_id": run.tenant,
            "id": run.id,
            "request_id": run.request_id,
            "fingerprint": run.fingerprint,
            "workflow_id": run.workflow_id,
            "workflow_version": run.workflow_version,
            "target": run.target.as_json(),
            "policy": run.policy.value,
            "delivery": run.delivery.value,
            "batch_size": run.drip.batch_size if run.drip else None,
            "interval_seconds": int(run.drip.interval.total_seconds()) if run.drip else None,
            "requested_by": run.requested_by,
            "created_at": run.created_at,
            **_progress(run),
        }
        inserted = await self._conn.execute(
            pg_insert(t.bulk_enrollments)
            .values(**values)
            .on_conflict_do_nothing(constraint="uq_bulk_enrollments_request")
            .returning(t.bulk_enrollments.c.id)
        )
        if inserted.first() is None:
            b = t.bulk_enrollments.c
            row = await self._first(
                select(t.bulk_enrollments).where(b.tenant_id == run.tenant, b.request_id == run.request_id)
            )
            assert row is not None
            return _run(row), False
        if contact_ids is not None:
            unique = list(dict.fromkeys(contact_ids))
            # The listed ids are stored as given; unknown ones are skipped (and counted) when worked.
            await self._conn.execute(
                text(
                    "INSERT INTO bulk_enrollment_targets (tenant_id, run_id, seq, contact_id) "
                    "SELECT :tenant, :run, u.seq, u.id FROM unnest(CAST(:ids AS uuid[])) "
                    "WITH ORDINALITY AS u(id, seq)"
                ),
                {"tenant": run.tenant, "run": run.id, "ids": unique},
            )
            run.total = len(unique)
        else:
            c = t.contacts.c
            numbered = select(
                literal(run.tenant),
                literal(run.id),
                func.row_number().over(order_by=(c.created_at, c.id)),
                c.id,
            ).where(*sql.contact_conditions(run.tenant, filters or ContactFilter()))
            result = await self._conn.execute(
                insert(t.bulk_enrollment_targets).from_select(
                    ["tenant_id", "run_id", "seq", "contact_id"], numbered
                )
            )
            run.total = int(result.rowcount or 0)
        if run.total == 0:
            run.status = RunStatus.DONE
            run.finished_at = run.created_at
            run.next_due_at = None
        await self.save(run)
        return run, True

    async def get(self, tenant: str, run_id: uuid.UUID, *, for_update: bool = False) -> BulkRun | None:
        b = t.bulk_enrollments.c
        statement = select(t.bulk_enrollments).where(b.tenant_id == tenant, b.id == run_id)
        row = await self._first(statement.with_for_update() if for_update else statement)
        return _run(row) if row else None

    async def claim_due(self, now: datetime) -> BulkRun | None:
        """The running run whose next chunk is due soonest, locked (others' locked runs skipped)."""
        b = t.bulk_enrollments.c
        row = await self._first(
            select(t.bulk_enrollments)
            .where(b.status == RunStatus.RUNNING.value, b.next_due_at <= now)
            .order_by(b.next_due_at)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        return _run(row) if row else None

    async def next_due_at(self) -> datetime | None:
        b = t.bulk_enrollments.c
        result = await self._conn.execute(
            select(func.min(b.next_due_at)).where(b.status == RunStatus.RUNNING.value)
        )
        value: datetime | None = result.scalar_one()
        return value

    async def save(self, run: BulkRun) -> None:
        b = t.bulk_enrollments.c
        await self._conn.execute(
            update(t.bulk_enrollments)
            .where(b.tenant_id == run.tenant, b.id == run.id)
            .values(**_progress(run))
        )

    async def targets(
        self, tenant: str, run_id: uuid.UUID, workflow_id: uuid.UUID, after: int, limit: int
    ) -> list[TargetContact]:
        """The next ``limit`` targets after seq ``after``, their contacts locked FOR UPDATE (in id
        order, like a single enrollment locks its contact, so the two never race), with whether each
        is running through ``workflow_id`` now or ever was."""
        driver = await driver_connection(self._conn)
        targets = await driver.fetch(_TARGETS, tenant, run_id, after, limit)
        if not targets:
            return []
        records = await driver.fetch(
            _TARGET_CONTACTS, tenant, [r["contact_id"] for r in targets], workflow_id
        )
        found = {r["id"]: r for r in records}
        out = []
        for seq, contact_id in targets:
            row = found.get(contact_id)
            out.append(
                TargetContact(
                    seq=seq,
                    contact_id=contact_id,
                    contact=_contact_of(row) if row is not None else None,
                    running=bool(row and row["bulk_running"]),
                    enrolled_before=bool(row and row["bulk_ever"]),
                )
            )
        return out

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
    ) -> None:
        """Write a chunk's enrollments (with their history), manual actions, changed contact owners
        and per-contact results, with COPY; ``*_rows`` are more rows already in ``RowFormat``
        (the lean path's). Each enrollment names the run; ``results`` need not list the contacts
        enrolled so (``results()`` finds them through their enrollment). An enrollment or result
        already stored for a contact of this run violates a unique index and fails the whole chunk:
        nobody is enrolled twice by one run."""
        driver = await driver_connection(self._conn)
        rows = [*enrollment_rows, *(_enrollment_record(e, run.id) for e in enrollments)]
        if rows:
            await driver.copy_records_to_table("enrollments", columns=ENROLLMENT_COLUMNS, records=rows)
        rows = [*history_rows, *(h for e in enrollments for h in _history_records(e))]
        if rows:
            await driver.copy_records_to_table("enrollment_history", columns=HISTORY_COLUMNS, records=rows)
        rows = [*action_rows, *(_action_record(a) for a in actions)]
        if rows:
            await driver.copy_records_to_table("manual_actions", columns=ACTION_COLUMNS, records=rows)
        rows = [(run.tenant, run.id, contact_id, o.value, eid, now) for contact_id, o, eid in results]
        if rows:
            await driver.copy_records_to_table(
                "bulk_enrollment_results", columns=RESULT_COLUMNS, records=rows
            )
        if changed_contacts:
            await self._conn.execute(
                text(
                    "UPDATE contacts SET owner_user_id = u.owner, updated_at = u.updated_at, "
                    "version = u.version FROM unnest(CAST(:ids AS uuid[]), CAST(:owners AS uuid[]), "
                    "CAST(:times AS timestamptz[]), CAST(:versions AS int[])) AS u(id, owner, updated_at, "
                    "version) WHERE contacts.tenant_id = :tenant AND contacts.id = u.id"
                ),
                {
                    "tenant": run.tenant,
                    "ids": [c.id for c in changed_contacts],
                    "owners": [c.owner_user_id for c in changed_contacts],
                    "times": [c.updated_at for c in changed_contacts],
                    "versions": [c.version for c in changed_contacts],
                },
            )

    async def stage_events(self, topic: str, documents: Sequence[dict[str, Any]]) -> None:
        """Stage envelope documents in the outbox (``sql.copy_documents_to_outbox``)."""
        await sql.copy_documents_to_outbox(self._conn, topic, documents)

    async def stage_envelopes(
        self,
        topic: str,
        tenant: str,
        message_type: str,
        version: int,
        envelopes: Sequence[tuple[str, str]],
    ) -> None:
        """Stage envelopes already in JSON text, ``(subject, text)``, all of one tenant,
        type and version, as one outbox batch row (``outbox.batch_record``: the relay publishes
        each as its own record, key = subject, with the headers ``sql.outbox_records`` gives a single
        row) and notify the relay."""
        if not envelopes:
            return
        headers = [("type", message_type), ("version", str(version)), ("tenant", tenant)]
        driver = await driver_connection(self._conn)
        await driver.copy_records_to_table(
            "outbox",
            columns=OUTBOX_COPY_COLUMNS,
            records=[batch_record(topic, tenant, headers, envelopes)],
        )
        await notify_outbox(self._conn)

    async def results(
        self, tenant: str, run_id: uuid.UUID, *, outcome: str | None, after: uuid.UUID | None, limit: int
    ) -> list[tuple[uuid.UUID, str, uuid.UUID | None, datetime]]:
        """The run's outcomes in contact id order: the stored results, and "enrolled" for each
        enrollment that names the run without a result of its own (a restart has one)."""
        conditions = ""
        if outcome is not None:
            conditions += " AND outcome = :outcome"
        if after is not None:
            conditions += " AND contact_id > :after"
        rows = (
            await self._conn.execute(
                text(_RESULTS.format(conditions=conditions)),
                {"tenant": tenant, "run": run_id, "outcome": outcome, "after": after, "limit": limit},
            )
        ).all()
        return [(row.contact_id, row.outcome, row.enrollment_id, row.at) for row in rows]


_RESULTS = """
    SELECT contact_id, outcome, enrollment_id, at FROM (
        SELECT contact_id, outcome, enrollment_id, at FROM bulk_enrollment_results
        WHERE tenant_id = :tenant AND run_id = :run
        UNION ALL
        SELECT e.contact_id, 'enrolled', e.id, e.created_at FROM enrollments e
        WHERE e.tenant_id = :tenant AND e.bulk_enrollment_id = :run
            AND NOT EXISTS (SELECT 1 FROM bulk_enrollment_results r WHERE r.tenant_id = :tenant
                            AND r.run_id = :run AND r.contact_id = e.contact_id)
    ) AS outcomes
    WHERE true{conditions}
    ORDER BY contact_id
    LIMIT :limit
"""


class SqlBulkUnitOfWork(sql.SqlUnitOfWork):
    """The service's unit of work plus the bulk enrollment repository."""

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self.bulk = SqlBulkRepository(self)


class SqlBulkUnitOfWorkFactory(sql.SqlUnitOfWorkFactory):
    def __call__(self) -> SqlBulkUnitOfWork:
        return SqlBulkUnitOfWork(self.engine)
