"""Durable timers: wake the enrollments whose Wait ended or whose manual step timed out.

``fire_due`` claims due timer rows with ``FOR UPDATE SKIP LOCKED`` (replicas never take the same
row, nobody blocks), runs each enrollment on (``runner.fire_timer``), marks the timers fired and
commits the enrollment changes, the new actions/timers, their outbox events and ``fired_at``
together. A crash before the commit leaves the timers unfired (they are claimed again after the
restart); after the commit they are done. A timer the enrollment no longer names (the action
finished first, the enrollment stopped) is stale: marked fired, nothing else.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime

from manual_actions.faults import crash_point
from workflow_runner import metrics
from workflow_runner.domain import runner
from workflow_runner.handlers import handlers
from workflow_runner.handlers.ports import UnitOfWork

TIMER_AFTER_CLAIM = "timer.after-claim"
"""Crash point: due timers claimed (locked), nothing changed yet."""
TIMER_AFTER_COMMIT = "timer.after-commit"
"""Crash point: the enrollments moved on and the timers are marked fired (committed)."""
DEFAULT_BATCH = 100

log = logging.getLogger(__name__)


async def fire_due(
    uow: UnitOfWork,
    now: datetime,
    *,
    limit: int = DEFAULT_BATCH,
    new_id: Callable[[], uuid.UUID] = uuid.uuid4,
) -> int:
    """Fire up to ``limit`` due timers in one transaction; returns how many were claimed."""
    fired = stale = 0
    async with uow:
        timers = await uow.timers.claim_due(now, limit)
        if not timers:
            return 0
        crash_point(TIMER_AFTER_CLAIM)
        # Same order in every batch, so two batches never wait on each other's rows in a cycle.
        for timer in sorted(timers, key=lambda t: (t.tenant, str(t.enrollment_id), t.due_at)):
            # Contact before enrollment, the lock order of every other writer (decision 0013).
            peek = await uow.enrollments.get(timer.tenant, timer.enrollment_id)
            if peek is not None:
                await uow.contacts.get(timer.tenant, peek.contact_id, for_update=True, include_deleted=True)
            enrollment = await uow.enrollments.get(timer.tenant, timer.enrollment_id, for_update=True)
            if enrollment is None or enrollment.timer_id != timer.id or not enrollment.is_running:
                stale += 1
                continue
            workflow = await uow.workflows.get(timer.tenant, enrollment.workflow_id)
            version = workflow.version(enrollment.workflow_version) if workflow else None
            contact = await uow.contacts.get(
                timer.tenant, enrollment.contact_id, for_update=True, include_deleted=True
            )
            if workflow is None or version is None or contact is None:
                raise RuntimeError(f"enrollment {enrollment.id} refers to missing rows")  # never deleted
            ctx = await handlers._run_context(uow, workflow, version, contact, now, new_id)
            result = runner.fire_timer(enrollment, timer, ctx)
            if result is None:
                stale += 1
                continue
            await uow.enrollments.save(enrollment)
            await handlers._apply(uow, workflow.id, ctx, result, causation_id=None)
            handlers._count(result)
            fired += 1
        await uow.timers.mark_fired(timers, now)
        await uow.commit()
    crash_point(TIMER_AFTER_COMMIT)
    metrics.TIMERS_FIRED.labels("moved").inc(fired)
    metrics.TIMERS_FIRED.labels("stale").inc(stale)
    log.info("timers fired", extra={"moved": fired, "stale": stale})
    return len(timers)
