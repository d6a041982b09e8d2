"""The step graph of a workflow version: how the runner walks it and what publishing checks.

Edges: a step goes to its ``next`` (default: the following step of the list, or the end after the
last one); a manual step's ``timeout.then`` is a second edge; a branch goes to each route target,
and to its successor when it has no ``default`` route; a stop step has no edge.

``check_graph`` reports, with field paths: targets naming no step, steps no path from the first
step reaches, loops made only of instant steps (Assign User, Branch, Stop: a loop without a Wait
or manual step would spin forever inside one transaction), and branches that some path reaches
without passing a manual step first (there would be no outcome to branch on).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

from workflow_runner.domain.errors import DomainError, Problem
from workflow_runner.domain.steps import (
    END,
    AssignUser,
    Branch,
    ManualCall,
    ManualSms,
    Step,
    StepSpec,
    Stop,
)


class StepGraph:
    """Typed steps of a published version, walked by id. A target of None means "the end"."""

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = tuple(steps)
        self._index = {s.id: i for i, s in enumerate(self.steps)}

    @property
    def first(self) -> str | None:
        return self.steps[0].id if self.steps else None

    def step(self, step_id: str) -> Step:
        try:
            return self.steps[self._index[step_id]]
        except KeyError:
            raise DomainError(f"step {step_id!r} is not in this version") from None

    def __contains__(self, step_id: object) -> bool:
        return step_id in self._index

    def resolve(self, target: str) -> str | None:
        """A ``next``/route/timeout target as a step id, None for ``end``."""
        return None if target == END else target

    def successor(self, step: Step) -> str | None:
        """Where the step goes on: its ``next``, else the following step of the list (None: end)."""
        if step.next is not None:
            return self.resolve(step.next)
        position = self._index[step.id] + 1
        return self.steps[position].id if position < len(self.steps) else None

    def edges(self, step: Step) -> Iterator[tuple[str, str | None]]:
        """(field the edge comes from, target id or None for the end)."""
        if isinstance(step, Stop):
            return
        if isinstance(step, Branch):
            for key, target in step.routes:
                yield f"on.{key}", self.resolve(target)
            if any(key == "default" for key, _ in step.routes):
                return
        yield "next", self.successor(step)
        if isinstance(step, ManualSms | ManualCall) and step.timeout is not None:
            yield "timeout.then", self.resolve(step.timeout.then)


def _instant(step: Step) -> bool:
    return isinstance(step, AssignUser | Branch | Stop)


def _raw_targets(spec: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    if "next" in spec:
        yield "next", spec["next"]
    on = spec.get("on")
    if isinstance(on, Mapping):
        for key, value in on.items():
            yield f"on.{key}", value
    timeout = spec.get("timeout")
    if isinstance(timeout, Mapping) and "then" in timeout:
        yield "timeout.then", timeout["then"]


def check_graph(specs: Sequence[StepSpec], steps: Sequence[Step], ids: Collection[str]) -> list[Problem]:
    """Every structural problem of the graph (see the module docstring). ``steps`` are the specs
    that parsed; reachability, loops and branch preconditions are only checked when all did and
    every target exists, since a broken step would make them report noise."""
    problems: list[Problem] = []
    index = {spec.get("id"): i for i, spec in enumerate(specs) if isinstance(spec, Mapping)}
    for i, spec in enumerate(specs):
        if not isinstance(spec, Mapping):
            continue
        for field, target in _raw_targets(spec):
            if isinstance(target, str) and target != END and target not in ids:
                problems.append(Problem(f"steps[{i}].{field}", f"step {target[:64]!r} does not exist"))
    if problems or len(steps) != len(specs):
        return problems
    graph = StepGraph(steps)

    # Reachability from the first step.
    reached: set[str] = set()
    todo = [steps[0].id]
    while todo:
        current = todo.pop()
        if current in reached:
            continue
        reached.add(current)
        todo.extend(t for _, t in graph.edges(graph.step(current)) if t is not None)
    for step in steps:
        if step.id not in reached:
            problems.append(
                Problem(f"steps[{index[step.id]}]", f"step {step.id!r} is unreachable from the first step")
            )

    # Loops made only of instant steps.
    looped: set[str] = set()
    for step in steps:
        if not _instant(step) or step.id in looped or step.id not in reached:
            continue
        path = _instant_loop(graph, step)
        if path:
            looped.update(path)
            shown = " -> ".join([*path, path[0]])
            problems.append(
                Problem(
                    f"steps[{index[step.id]}]",
                    f"loop {shown} has no wait or manual step (it would never pause)",
                )
            )

    # Branches need a manual step before them on every path (greatest fixpoint over predecessors).
    predecessors: dict[str, list[Step]] = {s.id: [] for s in steps}
    for step in steps:
        if step.id in reached:
            for _, target in graph.edges(step):
                if target is not None:
                    predecessors[target].append(step)
    has_outcome = {s.id: s.id != steps[0].id for s in steps}
    changed = True
    while changed:
        changed = False
        for step in steps:
            if step.id == steps[0].id or not has_outcome[step.id]:
                continue
            value = all(
                isinstance(p, ManualSms | ManualCall) or has_outcome[p.id] for p in predecessors[step.id]
            )
            if not value:
                has_outcome[step.id] = False
                changed = True
    for step in steps:
        if isinstance(step, Branch) and step.id in reached and not has_outcome[step.id]:
            problems.append(
                Problem(
                    f"steps[{index[step.id]}].on",
                    "a branch needs a manual SMS or call step before it on every path (it routes on "
                    "that action's outcome)",
                )
            )
    return problems


def _instant_loop(graph: StepGraph, start: Step) -> list[str]:
    """A path of instant steps from ``start`` back to it, or [] when there is none."""
    stack: list[tuple[str, list[str]]] = [(start.id, [start.id])]
    seen: set[str] = set()
    while stack:
        current, path = stack.pop()
        for _, target in graph.edges(graph.step(current)):
            if target is None:
                continue
            if target == start.id:
                return path
            step = graph.step(target)
            if _instant(step) and target not in seen:
                seen.add(target)
                stack.append((target, [*path, target]))
    return []
