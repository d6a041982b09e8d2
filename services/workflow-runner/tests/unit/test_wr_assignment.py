"""Assign User: smooth weighted round robin, availability, working hours, fallback, validation."""

from __future__ import annotations

import itertools
import random
import uuid
from collections import Counter
from datetime import timedelta

import pytest
from wr_factories import T0, TENANT, contact, published_workflow, sms, user

from workflow_runner.domain import runner
from workflow_runner.domain.assignment import expected_share, smooth_weighted_pick
from workflow_runner.domain.enrollments import Enrollment, HistoryEvent
from workflow_runner.domain.people import User
from workflow_runner.domain.steps import AssignUser, parse_steps
from workflow_runner.domain.workflows import Workflow


def test_weights_5_2_1_are_exact_in_every_cycle_and_smooth() -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    scores: dict[str, int] = {}
    picks = [smooth_weighted_pick(scores, [(a, 5), (b, 2), (c, 1)]) for _ in range(8 * 1250)]
    assert Counter(picks) == {a: 6250, b: 2500, c: 1250}
    for cycle in range(0, len(picks), 8):
        assert Counter(picks[cycle : cycle + 8]) == {a: 5, b: 2, c: 1}
    assert picks[:8] == [a, b, a, a, c, a, b, a]  # interleaved, not a block of five
    assert sorted(scores.values()) == [0, 0, 0]  # a full cycle brings every score back to zero


@pytest.mark.parametrize("weights", [(1, 1, 1), (3, 1), (7, 5, 2, 1), (1,)])
def test_any_prefix_is_within_one_of_the_exact_share(weights: tuple[int, ...]) -> None:
    users = [uuid.uuid4() for _ in weights]
    scores: dict[str, int] = {}
    counts: Counter[uuid.UUID] = Counter()
    for n in range(1, 200):
        picked = smooth_weighted_pick(scores, list(zip(users, weights, strict=True)))
        assert picked is not None
        counts[picked] += 1
        for user_id, share in expected_share(dict(zip(users, weights, strict=True)), n).items():
            assert abs(counts[user_id] - share) < 1


def test_no_candidate_picks_nobody_and_changes_nothing() -> None:
    scores = {"x": 3}
    assert smooth_weighted_pick(scores, []) is None and scores == {"x": 3}


def _assign_workflow(users: list[User], step: dict[str, object], known: list[User] | None = None) -> Workflow:
    spec = {"id": "assign", "type": "assign_user", "user_ids": [str(u.id) for u in users]} | step
    return published_workflow(spec, sms("sms1"), users=known or users)


def _run(
    workflow: Workflow, users: list[User], scores: dict[str, dict[str, int]], minutes: int = 0
) -> Enrollment:
    c = contact()
    version = workflow.published
    assert version is not None
    enrollment = Enrollment.start(
        tenant=TENANT, contact_id=c.id, workflow_id=workflow.id, workflow_version=version.number, now=T0
    )
    counter = itertools.count()
    ctx = runner.RunContext(
        workflow_name=workflow.name,
        version=version,
        contact=c,
        users={u.id: u for u in users},
        round_robin=scores,
        now=T0 + timedelta(minutes=minutes),
        new_id=lambda: uuid.UUID(int=next(counter) + 1),
    )
    runner.start(enrollment, ctx)
    return enrollment


def _assigned(enrollment: Enrollment) -> tuple[str, dict[str, object]]:
    entry = next(h for h in enrollment.history if h.step_id == "assign")
    return entry.event.value, entry.detail


def test_away_and_out_of_office_users_are_skipped_without_gaining_credit() -> None:
    ada, bo, cy = user("Ada"), user("Bo"), user("Cy")
    bo = bo.changed(
        {"availability": {"status": "out_of_office", "from": T0, "until": T0 + timedelta(hours=1)}}, T0
    )
    cy = cy.changed({"availability": {"status": "away"}}, T0)
    people = [ada, bo, cy]
    workflow = _assign_workflow(people, {"weights": [1, 1, 1]})
    scores: dict[str, dict[str, int]] = {}
    picks = [_assigned(_run(workflow, people, scores))[1]["user_id"] for _ in range(3)]
    assert picks == [str(ada.id)] * 3
    assert scores["assign"].get(str(bo.id), 0) == 0 and scores["assign"].get(str(cy.id), 0) == 0
    # Bo is back: no catching up for the hour away, Ada and Bo simply alternate again.
    back = [_assigned(_run(workflow, people, scores, minutes=60)) for _ in range(4)]
    assert [detail["user_id"] for _, detail in back] == [str(ada.id), str(bo.id)] * 2
    assert all(detail["unavailable_user_ids"] == [str(cy.id)] for _, detail in back)


def test_working_hours_only_when_the_step_asks() -> None:
    hours = {"mon": [{"start": "10:00", "end": "18:00"}]}  # T0 is Monday 09:00 UTC
    ada = user("Ada").changed({"working_hours": hours}, T0)
    bo = user("Bo")
    strict = _assign_workflow([ada, bo], {"respect_working_hours": True})
    scores: dict[str, dict[str, int]] = {}
    assert {_assigned(_run(strict, [ada, bo], scores))[1]["user_id"] for _ in range(4)} == {str(bo.id)}
    relaxed = _assign_workflow([ada, bo], {})
    assert {_assigned(_run(relaxed, [ada, bo], {}, minutes=0))[1]["user_id"]} == {str(ada.id)}


def test_fallback_user_or_left_as_is_when_nobody_is_available() -> None:
    away = user("Ada").changed({"availability": {"status": "away"}}, T0)
    boss = user("Boss")
    with_fallback = _assign_workflow([away], {"fallback_user_id": str(boss.id)}, known=[away, boss])
    event, detail = _assigned(_run(with_fallback, [away, boss], {}))
    assert (event, detail["user_id"]) == ("user_assigned", str(boss.id))
    assert str(detail["reason"]).startswith("fallback")
    without = _assign_workflow([away], {})
    enrollment = _run(without, [away], {})
    event, detail = _assigned(enrollment)
    assert event == HistoryEvent.ASSIGNMENT_FAILED.value and detail["unavailable_user_ids"] == [str(away.id)]


def test_assign_user_steps_are_validated_at_publish() -> None:
    ada, bo = uuid.uuid4(), uuid.uuid4()
    specs = [
        {"id": "a", "type": "assign_user", "user_ids": [str(ada), str(bo)], "weights": [5]},
        {"id": "b", "type": "assign_user", "user_ids": [str(ada)], "weights": [0]},
        {"id": "c", "type": "assign_user", "user_ids": [str(ada)], "fallback_user_id": str(uuid.uuid4())},
        {"id": "d", "type": "assign_user", "user_ids": [str(ada)], "respect_working_hours": "yes"},
    ]
    _, problems = parse_steps(specs, known_user_ids={ada, bo})
    assert [p.field for p in problems] == [
        "steps[0].weights",
        "steps[1].weights[0]",
        "steps[2].fallback_user_id",
        "steps[3].respect_working_hours",
    ]
    ok, none = parse_steps(
        [{"id": "a", "type": "assign_user", "user_ids": [str(ada), str(bo)], "weights": [5, 2]}], {ada, bo}
    )
    assert none == [] and isinstance(ok[0], AssignUser) and ok[0].weights == (5, 2)


def test_shuffled_eligibility_still_tracks_the_weights_of_those_available() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    rng = random.Random(7)
    scores: dict[str, int] = {}
    counts: Counter[uuid.UUID | None] = Counter()
    for _ in range(3000):
        candidates = [(a, 3), (b, 1)] if rng.random() < 0.5 else [(a, 3)]
        counts[smooth_weighted_pick(scores, candidates)] += 1
    assert counts[a] + counts[b] == 3000 and counts[b] > 0
