"""The step graph: default successors, Wait, Branch on every outcome, Timeout (cancel/keep), Stop,
goals, and the publish validation of the whole graph (pure domain, no I/O)."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from wr_factories import T0, TENANT, assign, call, contact, sms, user

from workflow_runner.domain import runner
from workflow_runner.domain.enrollments import (
    ActionStatus,
    Enrollment,
    EnrollmentStatus,
    HistoryEvent,
    ManualAction,
    Timer,
    TimerKind,
)
from workflow_runner.domain.errors import WorkflowInvalid
from workflow_runner.domain.people import Contact, User
from workflow_runner.domain.runner import FinishKind, RunContext
from workflow_runner.domain.timing import TimeWindow, parse_duration
from workflow_runner.domain.workflows import Workflow

_ids = itertools.count(1)


def published(*specs: dict[str, Any], users: list[User] = (), goals: list[str] | None = None) -> Workflow:  # type: ignore[assignment]
    workflow = Workflow.create(tenant=TENANT, name="Graph", steps=list(specs), now=T0, goals=goals or [])
    workflow.publish({u.id for u in users}, T0)
    return workflow


def ctx(workflow: Workflow, c: Contact, *, at: datetime = T0, users: list[User] = ()) -> RunContext:  # type: ignore[assignment]
    version = workflow.published
    assert version is not None
    return RunContext(
        workflow_name=workflow.name,
        version=version,
        contact=c,
        users={u.id: u for u in users},
        round_robin={},
        now=at,
        new_id=lambda: uuid.UUID(int=next(_ids)),
    )


def enrolled(workflow: Workflow, c: Contact) -> Enrollment:
    assert workflow.published is not None
    return Enrollment.start(
        tenant=TENANT,
        contact_id=c.id,
        workflow_id=workflow.id,
        workflow_version=workflow.published.number,
        now=T0,
    )


def start(workflow: Workflow, c: Contact) -> tuple[Enrollment, runner.RunResult]:
    enrollment = enrolled(workflow, c)
    return enrollment, runner.start(enrollment, ctx(workflow, c))


def timer_of(result: runner.RunResult) -> Timer:
    [timer] = result.timers
    return timer


# --- default successor and next -----------------------------------------------------------------


def test_next_jumps_and_end_completes() -> None:
    ada = user()
    workflow = published(
        assign("assign", ada.id) | {"next": "call1"},
        sms("sms_after") | {"next": "end"},
        call("call1") | {"next": "sms_after"},
        users=[ada],
    )
    c = contact()
    enrollment, result = start(workflow, c)
    assert result.action is not None and result.action.step_id == "call1"
    then = runner.finish_action(
        enrollment, result.action, FinishKind.COMPLETED, ctx(workflow, c), outcome="busy"
    )
    assert then.action is not None and then.action.step_id == "sms_after"
    done = runner.finish_action(
        enrollment, then.action, FinishKind.COMPLETED, ctx(workflow, c), outcome="sent"
    )
    assert done.action is None and enrollment.status is EnrollmentStatus.COMPLETED


# --- wait -------------------------------------------------------------------------------------------


def test_wait_duration_schedules_a_timer_and_continues_when_it_fires() -> None:
    workflow = published({"id": "pause", "type": "wait", "duration": "PT2H"}, sms("sms1"))
    c = contact()
    enrollment, result = start(workflow, c)
    timer = timer_of(result)
    assert (timer.kind, timer.step_id, timer.due_at) == (TimerKind.WAIT, "pause", T0 + timedelta(hours=2))
    assert enrollment.status is EnrollmentStatus.WAITING and enrollment.timer_id == timer.id
    assert result.action is None
    assert enrollment.history[-1].event is HistoryEvent.WAIT_STARTED

    later = runner.fire_timer(enrollment, timer, ctx(workflow, c, at=timer.due_at))
    assert later is not None and later.action is not None and later.action.step_id == "sms1"
    assert enrollment.timer_id is None and enrollment.waiting_action_id == later.action.id
    # The same timer again (a redelivery after a crash) is stale.
    assert runner.fire_timer(enrollment, timer, ctx(workflow, c, at=timer.due_at)) is None


def test_wait_until_window_uses_the_contacts_time_zone_or_utc() -> None:
    window = {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:00"}
    workflow = published({"id": "office", "type": "wait", "until": window}, sms("sms1"))
    # T0 is Monday 2025-01-06 09:00 UTC = 04:00 in New York: wait until 09:00 New York (14:00 UTC).
    _, result = start(workflow, contact(timezone="America/New_York"))
    assert timer_of(result).due_at == datetime(2025, 1, 6, 14, 0, tzinfo=UTC)
    # Without a time zone the window is read in UTC: 09:00 UTC is inside it, no wait.
    _, result = start(workflow, contact())
    assert timer_of(result).due_at == T0


def test_time_window_skips_to_the_next_allowed_day() -> None:
    window = TimeWindow.parse(["mon"], "09:00", "17:00")
    saturday = datetime(2025, 1, 11, 12, 0, tzinfo=UTC)
    assert window.next_in_window(saturday, "Europe/Berlin") == datetime(2025, 1, 13, 8, 0, tzinfo=UTC)
    monday_evening = datetime(2025, 1, 6, 18, 0, tzinfo=UTC)
    assert window.next_in_window(monday_evening, None) == datetime(2025, 1, 13, 9, 0, tzinfo=UTC)


def test_wait_duration_then_window() -> None:
    workflow = published(
        {"id": "w", "type": "wait", "duration": "PT10H", "until": {"start": "09:00", "end": "12:00"}},
        sms("s"),
    )
    _, result = start(workflow, contact())  # 09:00 + 10 h = 19:00, window opens next day 09:00
    assert timer_of(result).due_at == datetime(2025, 1, 7, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("PT30M", 1800), ("PT2H", 7200), ("P1D", 86400), ("P1DT12H", 129600), ("P2W", 1209600), ("PT1S", 1)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("bad", ["", "P", "PT", "P1M", "P1Y", "2h", "PT0S", "P400D", "PT1.5H", 7200])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


# --- branch -----------------------------------------------------------------------------------------

OUTCOMES = [
    "sms_sent",
    "connected",
    "no_answer",
    "voicemail",
    "busy",
    "left_message",
    "skipped",
    "expired",
    "deleted",
    "failed",
]


def _branching(first: dict[str, Any]) -> Workflow:
    targets = {key: f"to_{key}" for key in OUTCOMES}
    return published(
        first,
        {"id": "route", "type": "branch", "on": {**targets, "default": "to_default"}},
        *[sms(f"to_{key}") | {"next": "end"} for key in [*OUTCOMES, "default"]],
    )


@pytest.mark.parametrize(
    ("first", "kind", "outcome", "expected"),
    [
        (sms("first"), FinishKind.COMPLETED, "sent", "sms_sent"),
        (call("first"), FinishKind.COMPLETED, "connected", "connected"),
        (call("first"), FinishKind.COMPLETED, "no_answer", "no_answer"),
        (call("first"), FinishKind.COMPLETED, "voicemail", "voicemail"),
        (call("first"), FinishKind.COMPLETED, "busy", "busy"),
        (call("first"), FinishKind.COMPLETED, "left_message", "left_message"),  # the tenant's custom outcome
        (call("first"), FinishKind.COMPLETED, "wrong_number", "default"),  # no route for it
        (sms("first"), FinishKind.SKIPPED, None, "skipped"),
        (sms("first"), FinishKind.EXPIRED, None, "expired"),
        (call("first"), FinishKind.DELETED, None, "deleted"),
        (sms("first"), FinishKind.FAILED, None, "failed"),
    ],
)
def test_branch_routes_on_each_outcome(
    first: dict[str, Any], kind: FinishKind, outcome: str | None, expected: str
) -> None:
    workflow = _branching(first)
    c = contact()
    enrollment, result = start(workflow, c)
    assert result.action is not None
    moved = runner.finish_action(enrollment, result.action, kind, ctx(workflow, c), outcome=outcome)
    assert moved.action is not None and moved.action.step_id == f"to_{expected}"
    taken = [h for h in enrollment.history if h.event is HistoryEvent.BRANCH_TAKEN]
    assert taken[0].detail["to"] == f"to_{expected}"
    assert taken[0].detail["matched"] == (expected if expected != "default" else "default")


def test_branch_without_route_or_default_continues_at_next() -> None:
    workflow = published(
        call("c1"), {"id": "b", "type": "branch", "on": {"connected": "end"}, "next": "retry"}, call("retry")
    )
    c = contact()
    enrollment, result = start(workflow, c)
    assert result.action is not None
    moved = runner.finish_action(
        enrollment, result.action, FinishKind.COMPLETED, ctx(workflow, c), outcome="busy"
    )
    assert moved.action is not None and moved.action.step_id == "retry"
    enrollment2, result2 = start(workflow, contact())
    assert result2.action is not None
    runner.finish_action(
        enrollment2, result2.action, FinishKind.COMPLETED, ctx(workflow, c), outcome="connected"
    )
    assert enrollment2.status is EnrollmentStatus.COMPLETED


def test_retry_loop_through_a_manual_step_is_allowed() -> None:
    workflow = published(
        call("c1", action_name="Call"),
        {"id": "b", "type": "branch", "on": {"no_answer": "pause", "default": "end"}},
        {"id": "pause", "type": "wait", "duration": "P1D", "next": "c1"},
    )
    c = contact()
    enrollment, result = start(workflow, c)
    assert result.action is not None
    waited = runner.finish_action(
        enrollment, result.action, FinishKind.COMPLETED, ctx(workflow, c), outcome="no_answer"
    )
    again = runner.fire_timer(enrollment, timer_of(waited), ctx(workflow, c, at=T0 + timedelta(days=1)))
    assert again is not None and again.action is not None and again.action.step_id == "c1"


# --- timeout ----------------------------------------------------------------------------------------


def _timed(action: str) -> Workflow:
    return published(
        call("c1") | {"timeout": {"after": "PT4H", "then": "sms_late", "action": action}},
        {"id": "b", "type": "branch", "on": {"timed_out": "sms_late", "default": "end"}},
        sms("sms_late"),
    )


def test_timeout_cancel_follows_the_timeout_branch_and_cancels_the_action() -> None:
    workflow = _timed("cancel")
    c = contact()
    enrollment, result = start(workflow, c)
    action = result.action
    assert action is not None
    timer = timer_of(result)
    assert (timer.kind, timer.action_id, timer.due_at) == (
        TimerKind.TIMEOUT,
        action.id,
        T0 + timedelta(hours=4),
    )
    fired = runner.fire_timer(enrollment, timer, ctx(workflow, c, at=timer.due_at))
    assert fired is not None
    [cancel] = fired.cancellations
    assert (cancel.action_id, cancel.enrollment_id, cancel.tenant) == (action.id, enrollment.id, TENANT)
    assert fired.action is not None and fired.action.step_id == "sms_late"
    assert enrollment.last_outcome is None or enrollment.last_outcome == "timed_out"
    timed_out = next(h for h in enrollment.history if h.event is HistoryEvent.TIMED_OUT)
    assert timed_out.detail["action"] == "cancel" and timed_out.detail["then"] == "sms_late"
    # The action finishing late (a stale event) does not move the enrollment twice.
    assert (
        runner.finish_action(
            enrollment, action, FinishKind.COMPLETED, ctx(workflow, c), outcome="connected"
        ).events
        == []
    )
    assert enrollment.waiting_action_id == fired.action.id


def test_timeout_keep_leaves_the_action_alone() -> None:
    workflow = _timed("keep")
    c = contact()
    enrollment, result = start(workflow, c)
    fired = runner.fire_timer(enrollment, timer_of(result), ctx(workflow, c, at=T0 + timedelta(hours=4)))
    assert fired is not None and fired.cancellations == []
    assert fired.action is not None and fired.action.step_id == "sms_late"


def test_action_finished_before_its_timeout_makes_the_timer_stale() -> None:
    workflow = _timed("cancel")
    c = contact()
    enrollment, result = start(workflow, c)
    assert result.action is not None
    runner.finish_action(
        enrollment, result.action, FinishKind.COMPLETED, ctx(workflow, c), outcome="connected"
    )
    assert enrollment.status is EnrollmentStatus.COMPLETED
    assert (
        runner.fire_timer(enrollment, timer_of(result), ctx(workflow, c, at=T0 + timedelta(hours=4))) is None
    )


def test_manual_step_options_reach_the_action() -> None:
    workflow = published(
        sms("s1", message="Hi {{contact.first_name}}")
        | {"priority": 80, "due_in": "PT1H", "expires_in": "P1D"}
    )
    _, result = start(workflow, contact())
    action = result.action
    assert action is not None
    assert (action.priority, action.due_at, action.expires_at) == (
        80,
        T0 + timedelta(hours=1),
        T0 + timedelta(days=1),
    )
    assert action.message_template == "Hi {{contact.first_name}}" and action.message == "Hi Grace"


# --- stop and goals ---------------------------------------------------------------------------------


def test_stop_step_stops_the_enrollment() -> None:
    workflow = published(
        call("c1"),
        {"id": "b", "type": "branch", "on": {"connected": "done"}},
        sms("s"),
        {"id": "done", "type": "stop", "reason": "reached"},
    )
    c = contact()
    enrollment, result = start(workflow, c)
    assert result.action is not None
    stopped = runner.finish_action(
        enrollment, result.action, FinishKind.COMPLETED, ctx(workflow, c), outcome="connected"
    )
    assert enrollment.status is EnrollmentStatus.STOPPED
    assert any(isinstance(e, runner.EnrollmentStopped) for e in stopped.events)
    assert enrollment.history[-1].detail["reason"] == "reached"


def test_goal_stop_cancels_the_awaited_action_once() -> None:
    workflow = published(call("c1") | {"timeout": {"after": "P1D", "then": "end"}}, goals=["replied"])
    c = contact()
    enrollment, result = start(workflow, c)
    assert result.action is not None
    stopped = runner.stop(enrollment, T0, reason="the contact replied by SMS", goal="replied")
    assert [x.action_id for x in stopped.cancellations] == [result.action.id]
    assert enrollment.status is EnrollmentStatus.STOPPED and enrollment.timer_id is None
    assert [h.event for h in enrollment.history[-2:]] == [HistoryEvent.GOAL_REACHED, HistoryEvent.STOPPED]
    assert runner.stop(enrollment, T0, reason="again").events == []
    assert (
        runner.fire_timer(enrollment, timer_of(result), ctx(workflow, c, at=T0 + timedelta(days=1))) is None
    )


def test_record_finish_keeps_the_first_report() -> None:
    action = ManualAction(
        id=uuid.uuid4(),
        tenant=TENANT,
        enrollment_id=uuid.uuid4(),
        workflow_id=uuid.uuid4(),
        workflow_version=1,
        workflow_name="w",
        step_id="s",
        action_type=runner.ActionType.SMS,
        action_name="a",
        contact_id=uuid.uuid4(),
        contact_name="c",
        contact_phone=None,
        assignee_user_id=None,
        message="m",
        notes=None,
        status=ActionStatus.QUEUED,
        created_at=T0,
    )
    assert runner.record_finish(action, FinishKind.DELETED, T0)
    assert not runner.record_finish(action, FinishKind.COMPLETED, T0, "sent")
    assert action.status is ActionStatus.DELETED


# --- publish validation -----------------------------------------------------------------------------


def test_publish_reports_every_graph_problem_with_field_paths() -> None:
    ada = user()
    ghost = uuid.uuid4()
    workflow = Workflow.create(
        tenant=TENANT,
        name="Broken graph",
        steps=[
            {"id": "b0", "type": "branch", "on": {"connected": "end"}},  # no manual step before it
            assign("a1", ada.id, ghost) | {"next": "nowhere"},  # missing user, dangling next
            sms("s1", message="Hi {{contact.nickname}}") | {"timeout": {"after": "1 hour", "then": "ghost"}},
            {"id": "w1", "type": "wait", "duration": "P1M"},
            {"id": "end", "type": "stop"},
            {"id": "b2", "type": "branch", "on": {"Connected!": "s1", "busy": 7}},
        ],
        now=T0,
        goals=["replied", "bought"],
    )
    with pytest.raises(WorkflowInvalid) as caught:
        workflow.publish({ada.id}, T0)
    fields = [p.field for p in caught.value.problems]
    assert fields == [
        "steps[1].user_ids[1]",
        "steps[2].message",
        "steps[2].timeout.after",
        "steps[3].duration",
        "steps[4].id",
        "steps[5].on.Connected!",
        "steps[5].on.busy",
        "steps[1].next",
        "steps[2].timeout.then",
        "goals[1]",
    ]


def test_publish_reports_unreachable_steps_instant_loops_and_branches_without_an_action() -> None:
    ada = user()
    workflow = Workflow.create(
        tenant=TENANT,
        name="Structure",
        steps=[
            assign("a1", ada.id),
            {"id": "b1", "type": "branch", "on": {"busy": "a1"}, "next": "a1"},  # loop a1 -> b1 -> a1
            sms("lonely"),  # unreachable
            call("c1", action_name="Call"),
        ],
        now=T0,
    )
    with pytest.raises(WorkflowInvalid) as caught:
        workflow.publish({ada.id}, T0)
    messages = {p.field: p.message for p in caught.value.problems}
    assert set(messages) == {"steps[2]", "steps[3]", "steps[0]", "steps[1].on"}
    assert "unreachable" in messages["steps[2]"] and "unreachable" in messages["steps[3]"]
    assert "a1 -> b1 -> a1" in messages["steps[0]"]
    assert "manual" in messages["steps[1].on"]


def test_walking_skeleton_shape_still_publishes() -> None:
    ada = user()
    workflow = published(assign("assign", ada.id), sms("sms1"), call("call1"), users=[ada])
    assert [s.id for s in workflow.published.steps()] == ["assign", "sms1", "call1"]  # type: ignore[union-attr]
