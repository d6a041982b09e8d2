"""Bulk enrollment: its HTTP API (``router``, mounted by ``main.build_service``) and the background
loop that works runs chunk by chunk (``BulkEnrollmentLoop``).

Admins and managers submit and manage runs; agents get 403; another tenant's run answers 404 like a
missing one. Domain errors become problem+json through the app's handler (``entrypoints.http``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, status
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, model_validator

from manual_actions.auth import Principal, Role, require_roles
from workflow_runner.domain.bulk import (
    DEFAULT_CHUNK,
    MAX_BATCH_SIZE,
    MAX_INTERVAL_SECONDS,
    MAX_LISTED_CONTACTS,
    BulkRun,
    Drip,
    Outcome,
    Policy,
)
from workflow_runner.domain.phone import normalise_phone
from workflow_runner.handlers import bulk as bulk_handlers
from workflow_runner.handlers.ports import ContactFilter

log = logging.getLogger(__name__)

# Chunks of bulk enrollment runs that failed and were rolled back (retried after the interval).
BULK_CHUNK_FAILURES = Counter(
    "workflow_runner_bulk_chunk_failures_total",
    "Bulk enrollment chunks that failed and were rolled back.",
)

Supervisor = Annotated[Principal, Depends(require_roles(Role.ADMIN, Role.MANAGER))]


async def _uow(request: Request) -> bulk_handlers.BulkUnitOfWork:
    factory: Callable[[], bulk_handlers.BulkUnitOfWork] = request.app.state.bulk_uow
    return factory()


Uow = Annotated[bulk_handlers.BulkUnitOfWork, Depends(_uow)]


# --- bodies ---------------------------------------------------------------------------------------


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ContactFilterIn(_Request):
    """The conditions of ``GET /v1/contacts``; every condition given must hold. Deleted contacts
    never match. An empty filter matches every contact of the tenant."""

    tag: str | None = Field(default=None, max_length=64)
    owner_user_id: uuid.UUID | None = None
    unassigned: bool | None = None
    phone: str | None = Field(default=None, max_length=64, description="Any format; compared in E.164")
    email: str | None = Field(default=None, max_length=254)
    external_id: str | None = Field(default=None, max_length=200)
    q: str | None = Field(default=None, max_length=200, description="Part of the name (case-insensitive)")

    def to_filter(self) -> ContactFilter:
        phone = normalise_phone(self.phone, field="body.target.filter.phone") if self.phone else None
        return ContactFilter(
            tag=self.tag,
            owner_user_id=self.owner_user_id,
            unassigned=self.unassigned,
            phone=phone,
            email=self.email,
            external_id=self.external_id,
            name_contains=self.q,
        )


class TargetIn(_Request):
    """Exactly one of ``filter`` (contacts matching it when the request is accepted, oldest first)
    and ``contact_ids`` (in the given order; duplicates count once; unknown ids are skipped and
    counted as ``skipped_not_found``)."""

    filter: ContactFilterIn | None = None
    contact_ids: list[uuid.UUID] | None = Field(default=None, min_length=1, max_length=MAX_LISTED_CONTACTS)

    @model_validator(mode="after")
    def _exactly_one(self) -> TargetIn:
        if (self.filter is None) == (self.contact_ids is None):
            raise ValueError("give exactly one of filter and contact_ids")
        return self


class DeliveryIn(_Request):
    """``all_at_once``: every contact as fast as the service can; ``drip``: ``batch_size`` contacts,
    then the next batch no sooner than ``interval_seconds`` later (the due time is stored, so a
    restart keeps the pace)."""

    method: Literal["all_at_once", "drip"] = "all_at_once"
    batch_size: int | None = Field(default=None, ge=1, le=MAX_BATCH_SIZE)
    interval_seconds: int | None = Field(default=None, ge=1, le=MAX_INTERVAL_SECONDS)

    @model_validator(mode="after")
    def _drip_needs_both(self) -> DeliveryIn:
        if self.method == "drip" and (self.batch_size is None or self.interval_seconds is None):
            raise ValueError("drip needs batch_size and interval_seconds")
        if self.method == "all_at_once" and (
            self.batch_size is not None or self.interval_seconds is not None
        ):
            raise ValueError("batch_size and interval_seconds are only for drip")
        return self

    def to_drip(self) -> Drip | None:
        if self.method != "drip":
            return None
        assert self.batch_size is not None and self.interval_seconds is not None
        return Drip(self.batch_size, timedelta(seconds=self.interval_seconds))


class BulkEnrollmentCreate(_Request):
    request_id: str = Field(
        min_length=1,
        max_length=200,
        description="Idempotency key chosen by the client: the same request sent again returns the "
        "run it started instead of starting a second one.",
    )
    target: TargetIn
    delivery: DeliveryIn = Field(default_factory=DeliveryIn)
    reenrollment: Literal["skip_if_enrolled_ever", "skip_if_active", "allow_reenrollment"] = Field(
        default="skip_if_active",
        description="skip_if_active: skip contacts still in the workflow; skip_if_enrolled_ever: skip "
        "anyone ever enrolled in it; allow_reenrollment: everyone enters, and a contact still in it "
        "starts over (its running enrollment is stopped and its pending action cancelled).",
    )


class DeliveryView(BaseModel):
    method: str
    batch_size: int | None
    interval_seconds: int | None


class BulkEnrollmentView(BaseModel):
    id: uuid.UUID
    request_id: str
    workflow_id: uuid.UUID
    workflow_version: int
    status: Literal["running", "paused", "cancelled", "done"]
    target: dict[str, Any]
    delivery: DeliveryView
    reenrollment: str
    total: int = Field(
        description="Contacts targeted (the filter's matches when accepted, or the ids listed)"
    )
    enrolled: int = Field(description="Contacts that got a new enrollment (including restarted ones)")
    skipped: dict[str, int] = Field(description="Skipped contacts per reason")
    skipped_total: int
    remaining: int
    next_batch_due_at: datetime | None = Field(description="When the next chunk may run (running runs)")
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, run: BulkRun) -> BulkEnrollmentView:
        skipped = {o.value: run.skipped.get(o.value, 0) for o in Outcome if not o.enters}
        return cls(
            id=run.id,
            request_id=run.request_id,
            workflow_id=run.workflow_id,
            workflow_version=run.workflow_version,
            status=run.status.value,
            target=run.target.as_json(),
            delivery=DeliveryView(
                method=run.delivery.value,
                batch_size=run.drip.batch_size if run.drip else None,
                interval_seconds=int(run.drip.interval.total_seconds()) if run.drip else None,
            ),
            reenrollment=run.policy.value,
            total=run.total,
            enrolled=run.enrolled,
            skipped=skipped,
            skipped_total=sum(skipped.values()),
            remaining=max(0, run.total - run.worked),
            next_batch_due_at=run.next_due_at,
            created_at=run.created_at,
            updated_at=run.updated_at,
            finished_at=run.finished_at,
        )


class BulkResultView(BaseModel):
    contact_id: uuid.UUID
    outcome: str
    enrollment_id: uuid.UUID | None
    at: datetime


class BulkResultPage(BaseModel):
    items: list[BulkResultView]
    next_after: uuid.UUID | None = Field(description="Pass as `after` for the next page")


# --- routes ---------------------------------------------------------------------------------------

router = APIRouter(tags=["bulk enrollments"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such workflow / run in this tenant."}}


@router.post(
    "/v1/workflows/{workflow_id}/bulk-enrollments",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BulkEnrollmentView,
    responses={
        **NOT_FOUND,
        409: {"description": "The workflow is not published, or request_id was used for another request."},
    },
)
async def submit_bulk_enrollment(
    workflow_id: uuid.UUID, body: BulkEnrollmentCreate, principal: Supervisor, uow: Uow
) -> BulkEnrollmentView:
    """Enroll many contacts (a contact filter, or up to 100,000 listed ids) in the workflow's newest
    published version, which the whole run keeps. Accepted at once; the service works the run in
    the background (see ``GET /v1/bulk-enrollments/{id}``). Idempotent by ``request_id``."""
    run, _ = await bulk_handlers.submit(
        uow,
        bulk_handlers.SubmitBulk(
            tenant=principal.tenant,
            workflow_id=workflow_id,
            request_id=body.request_id,
            filters=body.target.filter.to_filter() if body.target.filter is not None else None,
            contact_ids=body.target.contact_ids,
            policy=Policy(body.reenrollment),
            drip=body.delivery.to_drip(),
            requested_by=principal.user_id,
        ),
    )
    return BulkEnrollmentView.of(run)


@router.get("/v1/bulk-enrollments/{run_id}", response_model=BulkEnrollmentView, responses=NOT_FOUND)
async def get_bulk_enrollment(run_id: uuid.UUID, principal: Supervisor, uow: Uow) -> BulkEnrollmentView:
    """Progress: total, enrolled, skipped per reason, when the next batch is due, status."""
    return BulkEnrollmentView.of(await bulk_handlers.get_run(uow, principal.tenant, run_id))


@router.get("/v1/bulk-enrollments/{run_id}/contacts", response_model=BulkResultPage, responses=NOT_FOUND)
async def list_bulk_enrollment_contacts(
    run_id: uuid.UUID,
    principal: Supervisor,
    uow: Uow,
    outcome: Annotated[
        Literal["enrolled", "restarted", "skipped_active", "skipped_enrolled_before", "skipped_not_found"]
        | None,
        Query(),
    ] = None,
    after: uuid.UUID | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> BulkResultPage:
    """What the run did with each contact worked so far (in contact id order)."""
    found = await bulk_handlers.list_results(
        uow, principal.tenant, run_id, outcome=outcome, after=after, limit=limit
    )
    return BulkResultPage(
        items=[BulkResultView(contact_id=c, outcome=o, enrollment_id=e, at=at) for c, o, e, at in found],
        next_after=found[-1][0] if len(found) == limit else None,
    )


def _status_route(change: str, summary: str) -> None:
    async def endpoint(run_id: uuid.UUID, principal: Supervisor, uow: Uow) -> BulkEnrollmentView:
        return BulkEnrollmentView.of(await bulk_handlers.change_status(uow, principal.tenant, run_id, change))

    endpoint.__name__ = f"{change}_bulk_enrollment"
    router.add_api_route(
        f"/v1/bulk-enrollments/{{run_id}}/{change}",
        endpoint,
        methods=["POST"],
        response_model=BulkEnrollmentView,
        summary=summary,
        responses={**NOT_FOUND, 409: {"description": "The run is already done (or cancelled)."}},
    )


_status_route("pause", "Pause a run (no further chunk starts until resumed)")
_status_route("resume", "Resume a paused run")
_status_route("cancel", "Cancel a run for good (contacts already enrolled stay enrolled)")


# --- the loop -------------------------------------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(UTC)


class BulkEnrollmentLoop:
    """Works due runs chunk after chunk (``handlers.bulk.run_chunk``), yielding to the event loop
    between chunks; looks again every ``interval`` seconds when nothing is due.

    A failing chunk rolls back, is logged and counted, and is tried again after the interval: its
    contacts were not enrolled, and the run's position did not move.
    """

    def __init__(
        self,
        uow: Callable[[], bulk_handlers.BulkUnitOfWork],
        *,
        interval: float = 0.25,
        chunk: int = DEFAULT_CHUNK,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._uow = uow
        self._interval = interval
        self._chunk = chunk
        self._clock = clock
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        """Until ``stop()`` (or cancellation); a chunk in flight finishes first."""
        while not self._stopping.is_set():
            try:
                while not self._stopping.is_set():
                    worked = await bulk_handlers.run_chunk(self._uow(), clock=self._clock, chunk=self._chunk)
                    if worked is None:
                        break
                    await asyncio.sleep(0)  # let HTTP requests in between chunks
            except Exception:
                log.exception("bulk enrollment chunk failed; retrying after the interval")
                BULK_CHUNK_FAILURES.inc()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._stopping.wait()

    async def stop(self) -> None:
        self._stopping.set()
