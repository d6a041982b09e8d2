"""Bulk enrollment rules (``domain.bulk``), the batch ActionQueued documents and the lean path's
rows, which must equal what the single-enrollment path stores and publishes."""

from __future__ import annotations

import json
import pickle
import uuid
from datetime import timedelta
from typing import Any

import pytest
from wr_factories import T0, TENANT, assign, call, contact, published_workflow, sms, user

from workflow_runner.adapters.bulk_sql import RowFormat
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
from workflow_runner.handlers.bulk import (
    ActionQueuedDocuments,
    LeanChunk,
    _mark_bulk,
    lean_step,
    random_ids,
    random_text_ids,
)


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


def _regular(
    workflow: Any, run: BulkRun, person: Any, users: dict[uuid.UUID, Any], ids: list[uuid.UUID]
) -> Any:
    """What the regular path stores for one contact: enrollment, history, action rows and the
    ActionQueued document (ids taken from ``ids`` in the order the lean path takes them)."""
    version = workflow.published
    taken = iter(ids)
    enrollment = Enrollment.start(
        tenant=TENANT,
        contact_id=person.id,
        workflow_id=workflow.id,
        workflow_version=version.number,
        now=T0,
        enrollment_id=next(taken),
    )
    _mark_bulk(enrollment, run)
    ctx = runner.RunContext(
        workflow_name=workflow.name,
        version=version,
        contact=person,
        users=users,
        round_robin={},
        now=T0,
        new_id=lambda: next(taken),
    )
    action = runner.start(enrollment, ctx).action
    assert action is not None
    rows = RowFormat()
    document = handlers.action_queued(action).to_jsonable()
    history = [entry for row in rows.history(enrollment) for entry in rows.history_of(row)]
    return rows.enrollment(enrollment, run.id), history, rows.action(action), document


def _parsed(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """Ids as text, JSON parsed: the lean path writes ids as text (the driver takes either)."""
    return tuple(
        str(v) if isinstance(v, uuid.UUID) else json.loads(v) if isinstance(v, str) and v[:1] in "{[" else v
        for v in row
    )


@pytest.mark.parametrize(
    "specs",
    [
        [sms("s1")],
        [
            sms(
                "s1",
                message="{{contact.name}}/{{contact.last_name}}/{{contact.phone}}/{{contact.email}}/{{user.first_name}}",
            )
        ],
        [sms("s1", message="Hi {{contact.custom.plan}} {{ contact.first_name }}")],
        [call("c1", notes="Ask {{contact.first_name}} about it")],
        [call("c1")],
    ],
)
def test_lean_rows_equal_the_regular_path(specs: list[dict[str, object]]) -> None:
    """Every contact's rows and event from the lean path equal the regular path's, whatever in the
    contact differs: owner or none, no phone, one-word name, explicit names, email, custom fields."""
    agent, other = user(), user(name="Bob", phone="+14155552672")
    users = {agent.id: agent, other.id: other}
    workflow = published_workflow(*specs, users=[agent, other])
    version = workflow.published
    assert version is not None
    step = lean_step(version)
    assert step is not None
    run = _run(10)
    run.workflow_id = workflow.id
    people = [
        contact(name="Grace Hopper", owner_user_id=agent.id),
        contact(name="Alan Turing", phone=None),
        contact(name="Plato", owner_user_id=other.id, email="p@example.com"),
        contact(name="Ada Lovelace", first_name="Augusta", last_name="King", owner_user_id=agent.id),
        contact(name="Kurt Gödel", custom_fields={"plan": "gold"}, owner_user_id=other.id),
    ]
    given: list[uuid.UUID] = []

    def new_id() -> uuid.UUID:
        given.append(uuid.uuid4())
        return given[-1]

    texts: list[str] = []

    def new_text_id() -> str:
        texts.append(str(uuid.uuid4()))
        return texts[-1]

    rows = RowFormat()
    lean = LeanChunk(run, workflow.name, version, step, users, T0, new_id, rows, new_text_id)
    assert lean.start(people[0]) is not None
    for person in people[1:]:
        lean.add(person)
    # The probe's ids come from the runner (enrollment, action); then three per contact as text:
    # enrollment, action, envelope.
    assert len(given) == 2 and len(texts) == 3 * (len(people) - 1)
    assert len(lean.enrollment_rows) == len(lean.history_rows) == len(lean.action_rows) == len(people)
    for index, person in enumerate(people):
        ids = given if index == 0 else [uuid.UUID(t) for t in texts[3 * (index - 1) : 3 * index - 1]]
        enrollment, history, action, document = _regular(workflow, run, person, users, ids)
        assert _parsed(lean.enrollment_rows[index]) == _parsed(enrollment)
        # One row for the two entries, read back as the two the regular path stores.
        assert rows.history_of(lean.history_rows[index]) == history
        assert _parsed(lean.action_rows[index]) == _parsed(action)
        subject, text = lean.events[index]
        assert subject == str(ids[1])
        if index:
            assert json.loads(text)["id"] == texts[3 * index - 1]
        assert {**json.loads(text), "id": None} == {**document, "id": None}


def test_random_text_ids_are_version_4_uuid_texts() -> None:
    new_text_id = random_text_ids(batch=8)
    texts = [new_text_id() for _ in range(200)]
    assert len(set(texts)) == 200
    for made in texts:
        parsed = uuid.UUID(made)
        assert str(parsed) == made and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_lean_step_only_for_a_first_manual_step_without_timeout() -> None:
    agent = user()
    for specs, lean in [
        ([sms("s1")], True),
        ([call("c1")], True),
        ([{**sms("s1"), "timeout": {"after": "PT1H", "then": "end", "action": "keep"}}], False),
        ([assign("a", agent.id), sms("s1")], False),
        ([{"id": "w", "type": "wait", "duration": "PT1H"}, sms("s1")], False),
    ]:
        version = published_workflow(*specs, users=[agent]).published
        assert version is not None
        assert (lean_step(version) is not None) is lean, specs
