"""Unit tests of the two counting stages (plain functions, no Kafka)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from dashboard.domain.pending import (
    MAX_REMEMBERED_DELTAS,
    ActionState,
    CountChange,
    DeltaMessage,
    InvalidDelta,
    LifecycleFact,
    LifecycleKind,
    SourcePosition,
    StageOneOutcome,
    TenantMismatch,
    TenantPending,
    apply_delta,
    count_lifecycle_event,
    fact_from_envelope,
)
from manual_actions.contracts import (
    ActionCompleted,
    ActionDeleted,
    ActionQueued,
    ActionType,
    ContactSnapshot,
    Envelope,
    SmsSent,
)
from manual_actions.contracts.messages import (
    ActionExpired,
    ActionFailed,
    ActionReassigned,
    ActionRequeued,
    ActionReserved,
    ActionSkipped,
    ActionSnoozed,
)

ALICE = "11111111-1111-1111-1111-111111111111"
BOB = "22222222-2222-2222-2222-222222222222"


def fact(kind: LifecycleKind, sequence: int, *, action_type: ActionType = ActionType.SMS,
         assignee: str | None = ALICE, tenant: str = "t1", action_id: str = "a1") -> LifecycleFact:
    return LifecycleFact(tenant=tenant, action_id=action_id, sequence=sequence, kind=kind,
                         action_type=action_type, assignee=assignee)


def at(offset: int, partition: int = 3) -> SourcePosition:
    return SourcePosition(partition, offset)


class Pipeline:
    """Drives both stages the way the stream does: one action table, one tenant table."""

    def __init__(self) -> None:
        self.actions: dict[str, ActionState] = {}
        self.pending: dict[str, TenantPending] = {}
        self.sent: list[DeltaMessage] = []

    def stage_one(self, f: LifecycleFact, position: SourcePosition) -> StageOneOutcome:
        result = count_lifecycle_event(self.actions.get(f.action_id), f, position)
        if result.state is not None:
            self.actions[f.action_id] = result.state
        if result.delta:
            self.sent.append(DeltaMessage(f.tenant, position, result.delta))
        return result.outcome

    def stage_two(self, messages: list[DeltaMessage] | None = None) -> None:
        for message in self.sent if messages is None else messages:
            updated = apply_delta(self.pending.get(message.tenant), message)
            if updated is not None:
                self.pending[message.tenant] = updated
        if messages is None:
            self.sent = []

    def counts(self, tenant: str = "t1") -> dict[str, object]:
        record = self.pending[tenant].to_record()
        del record["applied"], record["tenant"]
        return record


# --- stage 1 ------------------------------------------------------------------------------------


def test_queued_adds_one_for_type_and_assignee() -> None:
    result = count_lifecycle_event(None, fact(LifecycleKind.QUEUED, 1), at(10))
    assert result.outcome is StageOneOutcome.APPLIED
    assert result.delta == (CountChange(ActionType.SMS, ALICE, +1),)
    assert result.state is not None
    assert result.state.pending and result.state.last_sequence == 1 and result.state.last_source_offset == 10
    assert result.state.last_delta == result.delta


def test_completed_of_pending_action_removes_it_where_it_was_counted() -> None:
    queued = count_lifecycle_event(None, fact(LifecycleKind.QUEUED, 1), at(10)).state
    # The completion names another assignee (e.g. a colleague completed it): the -1 still goes to
    # the assignee the +1 went to, or the counts would drift.
    done = count_lifecycle_event(queued, fact(LifecycleKind.COMPLETED, 2, assignee=BOB), at(11))
    assert done.delta == (CountChange(ActionType.SMS, ALICE, -1),)
    assert done.state is not None and not done.state.pending


def test_delete_after_complete_changes_nothing() -> None:
    p = Pipeline()
    p.stage_one(fact(LifecycleKind.QUEUED, 1), at(10))
    p.stage_one(fact(LifecycleKind.COMPLETED, 2), at(11))
    assert p.stage_one(fact(LifecycleKind.DELETED, 3), at(12)) is StageOneOutcome.APPLIED
    assert len(p.sent) == 2, "the delete of a completed action must not send a delta"
    p.stage_two()
    assert p.counts() == {"total": 0, "calls": 0, "sms": 0, "by_assignee": {},
                          "unassigned": {"total": 0, "calls": 0, "sms": 0}}


def test_completed_or_deleted_before_queued_never_counts() -> None:
    first = count_lifecycle_event(None, fact(LifecycleKind.DELETED, 2), at(10))
    assert first.delta == () and first.state is not None and not first.state.pending
    # The ActionQueued (sequence 1) arrives late: it is older than what was applied.
    late = count_lifecycle_event(first.state, fact(LifecycleKind.QUEUED, 1), at(11))
    assert late.outcome is StageOneOutcome.STALE and late.delta == () and late.state is None


def test_out_of_order_and_duplicate_sequences_have_no_effect() -> None:
    p = Pipeline()
    p.stage_one(fact(LifecycleKind.QUEUED, 1), at(10))
    # The same envelope published twice (at a new offset): counted once.
    assert p.stage_one(fact(LifecycleKind.QUEUED, 1), at(11)) is StageOneOutcome.STALE
    p.stage_one(fact(LifecycleKind.COMPLETED, 3), at(12))
    # An older event after a newer one: ignored, the action stays completed.
    assert p.stage_one(fact(LifecycleKind.QUEUED, 2), at(13)) is StageOneOutcome.STALE
    p.stage_two()
    assert p.counts()["total"] == 0
    assert p.actions["a1"].last_sequence == 3 and not p.actions["a1"].pending


def test_requeue_under_another_assignee_moves_the_count() -> None:
    p = Pipeline()
    p.stage_one(fact(LifecycleKind.QUEUED, 1, assignee=ALICE), at(10))
    p.stage_one(fact(LifecycleKind.QUEUED, 2, assignee=BOB), at(11))
    p.stage_one(fact(LifecycleKind.QUEUED, 3, assignee=BOB), at(12))  # same assignee: no change
    assert len(p.sent) == 2
    p.stage_two()
    assert p.counts()["total"] == 1
    assert p.counts()["by_assignee"] == {BOB: {"total": 1, "calls": 0, "sms": 1}}


def test_redelivery_of_the_same_offset_resends_the_stored_delta() -> None:
    queued = count_lifecycle_event(None, fact(LifecycleKind.QUEUED, 1), at(10))
    again = count_lifecycle_event(queued.state, fact(LifecycleKind.QUEUED, 1), at(10))
    assert again.outcome is StageOneOutcome.REDELIVERED
    assert again.delta == queued.delta, "recomputing from the advanced state would give no delta"
    assert again.state is None


def test_redelivery_of_an_earlier_offset_resends_that_offsets_delta() -> None:
    # Crash after offsets 10 (queued) and 11 (completed) were stored but before either delta left:
    # both are redelivered and both deltas must be sent again, in order.
    queued = count_lifecycle_event(None, fact(LifecycleKind.QUEUED, 1), at(10))
    done = count_lifecycle_event(queued.state, fact(LifecycleKind.COMPLETED, 2), at(11))
    assert done.state is not None
    first = count_lifecycle_event(done.state, fact(LifecycleKind.QUEUED, 1), at(10))
    second = count_lifecycle_event(done.state, fact(LifecycleKind.COMPLETED, 2), at(11))
    assert (first.outcome, first.delta) == (StageOneOutcome.REDELIVERED, queued.delta)
    assert (second.outcome, second.delta) == (StageOneOutcome.REDELIVERED, done.delta)


def test_redelivered_offset_without_delta_sends_nothing() -> None:
    p = Pipeline()
    p.stage_one(fact(LifecycleKind.DELETED, 1), at(10))
    assert p.stage_one(fact(LifecycleKind.DELETED, 1), at(10)) is StageOneOutcome.REDELIVERED
    assert p.sent == []


def test_event_on_another_partition_is_not_mistaken_for_a_redelivery() -> None:
    queued = count_lifecycle_event(None, fact(LifecycleKind.QUEUED, 1), at(10, partition=1))
    done = count_lifecycle_event(queued.state, fact(LifecycleKind.COMPLETED, 2), at(5, partition=2))
    assert done.outcome is StageOneOutcome.APPLIED and done.delta[0].amount == -1
    assert done.state is not None and set(done.state.deltas) == {5}


def test_remembered_deltas_are_bounded() -> None:
    state = None
    for sequence in range(1, 3 * MAX_REMEMBERED_DELTAS):
        kind = LifecycleKind.QUEUED if sequence % 2 else LifecycleKind.COMPLETED
        state = count_lifecycle_event(state, fact(kind, sequence), at(100 + sequence)).state
    assert state is not None
    assert len(state.deltas) == MAX_REMEMBERED_DELTAS
    assert max(state.deltas) == state.last_source_offset


def test_tenant_mismatch_is_rejected() -> None:
    queued = count_lifecycle_event(None, fact(LifecycleKind.QUEUED, 1), at(10)).state
    with pytest.raises(TenantMismatch, match="t2"):
        count_lifecycle_event(queued, fact(LifecycleKind.COMPLETED, 2, tenant="t2"), at(11))


def test_action_state_record_round_trip() -> None:
    queued = count_lifecycle_event(None, fact(LifecycleKind.QUEUED, 1, assignee=None), at(10)).state
    assert queued is not None
    assert ActionState.from_record(queued.to_record()) == queued


# --- stage 2 ------------------------------------------------------------------------------------


def test_stage_two_applies_each_source_offset_at_most_once() -> None:
    message = DeltaMessage("t1", at(10), (CountChange(ActionType.CALL, ALICE, +1),))
    first = apply_delta(None, message)
    assert first is not None and first.all.calls == 1 and first.applied == {3: 10}
    assert apply_delta(first, message) is None
    older = DeltaMessage("t1", at(9), (CountChange(ActionType.CALL, ALICE, +1),))
    assert apply_delta(first, older) is None
    # The same offset number from another source partition is a different message.
    elsewhere = DeltaMessage("t1", at(10, partition=4), (CountChange(ActionType.SMS, None, +1),))
    other = apply_delta(first, elsewhere)
    assert other is not None
    assert (other.all.total, other.all.calls, other.all.sms, other.unassigned.sms) == (2, 1, 1, 1)
    assert other.applied == {3: 10, 4: 10}


def test_crash_replay_through_both_stages_keeps_counts_exact() -> None:
    p = Pipeline()
    p.stage_one(fact(LifecycleKind.QUEUED, 1, action_id="a1"), at(10))
    p.stage_one(fact(LifecycleKind.QUEUED, 1, action_id="a2", action_type=ActionType.CALL), at(11))
    p.stage_one(fact(LifecycleKind.COMPLETED, 2, action_id="a1"), at(12))
    # Only the first delta reached stage 2 before the crash; the tables kept all three updates.
    p.stage_two(p.sent[:1])
    p.sent = []
    # After the restart the uncommitted offsets are delivered again from offset 10.
    for f, offset in [
        (fact(LifecycleKind.QUEUED, 1, action_id="a1"), 10),
        (fact(LifecycleKind.QUEUED, 1, action_id="a2", action_type=ActionType.CALL), 11),
        (fact(LifecycleKind.COMPLETED, 2, action_id="a1"), 12),
    ]:
        assert p.stage_one(f, at(offset)) is StageOneOutcome.REDELIVERED
    assert len(p.sent) == 3
    p.stage_two()
    assert p.counts() == {
        "total": 1, "calls": 1, "sms": 0,
        "by_assignee": {ALICE: {"total": 1, "calls": 1, "sms": 0}},
        "unassigned": {"total": 0, "calls": 0, "sms": 0},
    }


def test_tenants_are_counted_apart() -> None:
    p = Pipeline()
    p.stage_one(fact(LifecycleKind.QUEUED, 1, tenant="t1", action_id="a1"), at(10))
    p.stage_one(fact(LifecycleKind.QUEUED, 1, tenant="t2", action_id="a2"), at(11))
    p.stage_two()
    assert p.counts("t1")["total"] == 1 and p.counts("t2")["total"] == 1


def test_tenant_pending_record_round_trip_and_negative_detection() -> None:
    state = apply_delta(None, DeltaMessage("t1", at(1), (CountChange(ActionType.SMS, BOB, -1),)))
    assert state is not None
    assert TenantPending.from_record(state.to_record()) == state
    assert state.has_negative_count()


def test_delta_message_round_trip_and_rejects() -> None:
    message = DeltaMessage("t1", at(7), (CountChange(ActionType.CALL, None, -1),))
    assert DeltaMessage.from_json_bytes(message.to_json_bytes()) == message
    with pytest.raises(InvalidDelta, match="not JSON"):
        DeltaMessage.from_json_bytes(b"{nope")
    with pytest.raises(InvalidDelta, match="field tenant"):
        DeltaMessage.from_json_bytes(b'{"source_partition":1,"source_offset":2,"changes":[]}')
    with pytest.raises(InvalidDelta, match="source_offset"):
        DeltaMessage.from_json_bytes(b'{"tenant":"t","source_partition":1,"source_offset":-2,"changes":[]}')
    with pytest.raises(InvalidDelta, match="amount"):
        DeltaMessage.from_json_bytes(
            b'{"tenant":"t","source_partition":1,"source_offset":2,'
            b'"changes":[{"type":"sms","assignee":null,"amount":5}]}'
        )


# --- envelope → fact ----------------------------------------------------------------------------


def test_fact_from_lifecycle_envelopes() -> None:
    action_id, user = uuid.uuid4(), uuid.uuid4()
    now = datetime.now(UTC)
    queued = ActionQueued(
        action_id=action_id, action_type=ActionType.CALL, action_name="Call", workflow_id=uuid.uuid4(),
        workflow_version=1, workflow_name="W", step_id="call1", enrollment_id=uuid.uuid4(),
        contact=ContactSnapshot(contact_id=uuid.uuid4(), name="C", phone=None),
        assignee_user_id=user, queued_at=now,
    )
    env = Envelope.wrap(queued, source="workflow-runner", tenant="t1", subject=str(action_id), sequence=1)
    assert fact_from_envelope(env) == LifecycleFact("t1", str(action_id), 1, LifecycleKind.QUEUED,
                                                     ActionType.CALL, str(user))
    deleted = ActionDeleted(action_id=action_id, action_type=ActionType.CALL, enrollment_id=uuid.uuid4(),
                            step_id="call1", assignee_user_id=None, deleted_by=None, deleted_at=now)
    env = Envelope.wrap(deleted, source="action-queue", tenant="t1", subject=str(action_id), sequence=2)
    got = fact_from_envelope(env)
    assert got is not None and got.kind is LifecycleKind.DELETED and got.assignee is None
    completed = ActionCompleted(action_id=action_id, action_type=ActionType.SMS, enrollment_id=uuid.uuid4(),
                                step_id="s", assignee_user_id=user, outcome="sent", completed_by=user,
                                completed_at=now)
    env = Envelope.wrap(completed, source="action-queue", tenant="t1", subject=str(action_id), sequence=3)
    got = fact_from_envelope(env)
    assert got is not None and got.kind is LifecycleKind.COMPLETED and got.sequence == 3


@pytest.mark.parametrize("kind", [LifecycleKind.SKIPPED, LifecycleKind.EXPIRED, LifecycleKind.FAILED])
def test_skipped_expired_and_failed_actions_stop_being_pending(kind: LifecycleKind) -> None:
    queued = count_lifecycle_event(None, fact(LifecycleKind.QUEUED, 1), at(10)).state
    ended = count_lifecycle_event(queued, fact(kind, 4), at(13))
    assert ended.delta == (CountChange(ActionType.SMS, ALICE, -1),)
    assert ended.state is not None and not ended.state.pending


def test_reassigned_pending_action_moves_its_count_and_ends_under_the_new_assignee() -> None:
    p = Pipeline()
    p.stage_one(fact(LifecycleKind.QUEUED, 1), at(10))
    p.stage_one(fact(LifecycleKind.REASSIGNED, 3, assignee=BOB), at(11))
    p.stage_two()
    # assignees whose counts drop to zero are left out
    assert p.counts()["by_assignee"] == {BOB: {"total": 1, "calls": 0, "sms": 1}}
    p.stage_one(fact(LifecycleKind.COMPLETED, 4, assignee=BOB), at(12))
    p.stage_two()
    assert p.counts()["total"] == 0
    assert p.counts()["by_assignee"] == {}


def test_reassigning_a_finished_action_changes_no_count() -> None:
    queued = count_lifecycle_event(None, fact(LifecycleKind.QUEUED, 1), at(10)).state
    done = count_lifecycle_event(queued, fact(LifecycleKind.DELETED, 2), at(11)).state
    moved = count_lifecycle_event(done, fact(LifecycleKind.REASSIGNED, 3, assignee=BOB), at(12))
    assert moved.delta == ()
    assert moved.state is not None and not moved.state.pending


def test_action_queue_transitions_map_to_facts_or_are_ignored() -> None:
    action_id, user, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    now = datetime.now(UTC)
    common = {"action_id": action_id, "action_type": ActionType.SMS, "assignee_user_id": user}
    expected = [
        (ActionReserved(**common, reserved_by=user, lease_expires_at=now, reserved_at=now), None),
        (ActionSnoozed(**common, until=now, snoozed_by=user, snoozed_at=now), None),
        (ActionRequeued(**common, reason="snooze ended", requeued_at=now), None),
        (ActionSkipped(**common, reason="opted out", skipped_by=None, skipped_at=now), LifecycleKind.SKIPPED),
        (ActionExpired(**common, expired_at=now), LifecycleKind.EXPIRED),
        (ActionFailed(**common, reason="gave up", failed_at=now), LifecycleKind.FAILED),
        (ActionReassigned(action_id=action_id, action_type=ActionType.SMS, assignee_user_id=other,
                          previous_assignee_user_id=user, reassigned_by=None, reassigned_at=now),
         LifecycleKind.REASSIGNED),
    ]
    for payload, kind in expected:
        env = Envelope.wrap(payload, source="action-queue", tenant="t1", subject=str(action_id), sequence=2)
        got = fact_from_envelope(env)
        assert (got.kind if got else None) is kind, payload.message_type
    reassigned = fact_from_envelope(Envelope.wrap(expected[-1][0], source="action-queue", tenant="t1",
                                                  subject=str(action_id), sequence=2))
    assert reassigned is not None and reassigned.assignee == str(other)


def test_other_message_types_are_ignored() -> None:
    sent = SmsSent(command_id=uuid.uuid4(), action_id=uuid.uuid4(), message_sid="SM" + "0" * 32,
                   to="+14155550100", delivery_status="sent", sent_at=datetime.now(UTC))
    env = Envelope.wrap(sent, source="sms-sender", tenant="t1", subject="x", sequence=1)
    assert fact_from_envelope(env) is None
