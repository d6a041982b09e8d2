"""Bulk enrollment rules (``domain.bulk``) and the batch ActionQueued documents, which must equal
what the single-enrollment path publishes."""

from __future__ import annotations

import pickle
import uuid
from datetime import timedelta

import pytest
from wr_factories import T0, TENANT, call, contact, published_workflow, sms, user

from workflow_runner.domain import runner
from workflow_runner.domain.bulk import (
    BulkRun,
    Delivery,
    Drip,
    Outcome,
    Policy,
    RunFinished,
    RunStatus,
    Target,
    decide,
)
from workflow_runner.domain.enrollments import Enrollment
from workflow_runner.domain.errors import InvalidField
from workflow_runner.handlers import handlers
from workflow_runner.handlers.bulk import ActionQueuedDocuments, random_ids


def _run(total: int, drip: Drip | None = None) -> BulkRun:
    return BulkRun(
        id=uuid.uuid4(),
        tenant=TENANT,
        request_id="r",
        fingerprint="f",
        workflow_id=uuid.uuid4(),
        workflow_version=1,
        target=Target("filter"),
        policy=Policy.SKIP_IF_ACTIVE,
        delivery=Delivery.DRIP if drip else Delivery.ALL_AT_ONCE,
        drip=drip,
        status=RunStatus.RUNNING,
        total=total,
        created_at=T0,
        updated_at=T0,
        next_due_at=T0,
    )


@pytest.mark.parametrize(
    ("policy", "facts", "expected"),
    [
        (Policy.SKIP_IF_ACTIVE, (True, False, False), Outcome.ENROLLED),
        (Policy.SKIP_IF_ACTIVE, (True, False, True), Outcome.ENROLLED),
        (Policy.SKIP_IF_ACTIVE, (True, True, True), Outcome.SKIPPED_ACTIVE),
        (Policy.SKIP_IF_ENROLLED_EVER, (True, False, True), Outcome.SKIPPED_ENROLLED_BEFORE),
        (Policy.SKIP_IF_ENROLLED_EVER, (True, True, True), Outcome.SKIPPED_ACTIVE),
        (Policy.SKIP_IF_ENROLLED_EVER, (True, False, False), Outcome.ENROLLED),
        (Policy.ALLOW_REENROLLMENT, (True, False, True), Outcome.ENROLLED),
        (Policy.ALLOW_REENROLLMENT, (True, True, True), Outcome.RESTARTED),
        (Policy.ALLOW_REENROLLMENT, (False, False, False), Outcome.SKIPPED_NOT_FOUND),
    ],
)
def test_decide(policy: Policy, facts: tuple[bool, bool, bool], expected: Outcome) -> None:
    exists, running, before = facts
    assert decide(policy, exists=exists, running=running, enrolled_before=before) is expected


def test_all_at_once_takes_full_chunks_and_is_done_after_the_last_target() -> None:
    run = _run(2500)
    assert run.chunk_size(1000) == 1000
    run.advance(1000, {Outcome.ENROLLED: 985, Outcome.RESTARTED: 5, Outcome.SKIPPED_ACTIVE: 10}, 1000, T0)
    assert run.next_due_at == T0 and run.status is RunStatus.RUNNING
    run.advance(2000, {Outcome.ENROLLED: 1000}, 1000, T0)
    run.advance(2500, {Outcome.ENROLLED: 500}, 500, T0 + timedelta(seconds=1))
    assert run.status is RunStatus.DONE and run.finished_at == T0 + timedelta(seconds=1)
    assert (run.enrolled, run.skipped, run.worked) == (2490, {"skipped_active": 10}, 2500)


def test_drip_chunks_stop_at_the_batch_end_and_schedule_the_next_batch() -> None:
    run = _run(5, Drip(batch_size=3, interval=timedelta(minutes=10)))
    assert run.chunk_size(1000) == 3
    run.advance(2, {Outcome.ENROLLED: 2}, 2, T0)  # a chunk cut short: the batch is not complete
    assert run.next_due_at == T0 and run.chunk_size(1000) == 1
    later = T0 + timedelta(seconds=5)
    run.advance(3, {Outcome.ENROLLED: 1}, 1, later)
    assert run.next_due_at == later + timedelta(minutes=10) and run.batch_done == 0
    assert not run.is_due(later + timedelta(minutes=9)) and run.is_due(later + timedelta(minutes=10))
    run.advance(5, {Outcome.ENROLLED: 2}, 2, later + timedelta(minutes=10))
    assert run.status is RunStatus.DONE and run.next_due_at is None


def test_drip_settings_are_checked() -> None:
    with pytest.raises(InvalidField) as error:
        Drip(batch_size=0, interval=timedelta(seconds=5))
    assert error.value.field == "delivery.batch_size"
    with pytest.raises(InvalidField) as error:
        Drip(batch_size=5, interval=timedelta(seconds=0.5))
    assert error.value.field == "delivery.interval_seconds"


def test_pause_resume_cancel() -> None:
    run = _run(10)
    run.pause(T0)
    assert run.status is RunStatus.PAUSED and not run.is_due(T0)
    run.resume(T0)
    assert run.is_due(T0)
    run.cancel(T0)
    run.cancel(T0)  # again: nothing changes
    assert run.status is RunStatus.CANCELLED and run.next_due_at is None
    with pytest.raises(RunFinished):
        run.resume(T0)


@pytest.mark.parametrize("specs", [[sms("s1")], [call("c1", notes="Ask {{contact.first_name}} about it")]])
def test_batch_documents_equal_the_single_enrollment_event(specs: list[dict[str, object]]) -> None:
    agent = user()
    workflow = published_workflow(*specs, users=[agent])
    version = workflow.published
    assert version is not None
    documents = ActionQueuedDocuments()
    people = [
        contact(name="Grace Hopper", owner_user_id=agent.id),
        contact(name="Alan Turing", phone=None),
        contact(name="Ada Lovelace", owner_user_id=agent.id),
    ]
    for person in people:
        enrollment = Enrollment.start(
            tenant=TENANT,
            contact_id=person.id,
            workflow_id=workflow.id,
            workflow_version=version.number,
            now=T0,
        )
        ctx = runner.RunContext(
            workflow_name=workflow.name,
            version=version,
            contact=person,
            users={agent.id: agent},
            round_robin={},
            now=T0,
        )
        action = runner.start(enrollment, ctx).action
        assert action is not None
        fast = documents(action)
        real = handlers.action_queued(action).to_jsonable()
        assert uuid.UUID(fast["id"]) != uuid.UUID(real["id"])
        assert {**fast, "id": None} == {**real, "id": None}


def test_random_ids_are_distinct_version_4_uuids() -> None:
    new_id = random_ids(batch=8)
    ids = [new_id() for _ in range(100)]  # crosses the buffer refill many times
    assert len(set(ids)) == 100
    assert all(i.version == 4 and i.variant == uuid.RFC_4122 for i in ids)
    # Made without UUID.__init__: each must behave exactly like the UUID parsed from its text
    # (equality, hash, bytes, pickling), as the database driver and the envelopes rely on it.
    for made in ids:
        parsed = uuid.UUID(str(made))
        assert made == parsed and hash(made) == hash(parsed) and made.bytes == parsed.bytes
        assert pickle.loads(pickle.dumps(made)) == parsed and made.is_safe is uuid.SafeUUID.unknown
