"""The Kafka side: the batch handler the ``BatchConsumer`` of group ``workflow-runner`` calls.

From the action lifecycle topic it takes ActionCompleted and ActionDeleted and continues the
enrollments waiting on those actions; every other message type there (our own ActionQueued, ...)
is not ours to act on and is passed over.
"""

from __future__ import annotations

from collections.abc import Sequence

from manual_actions.contracts import ActionCompleted, ActionDeleted, topics
from manual_actions.kafka import BatchHandler, Delivered
from workflow_runner.domain.runner import FinishKind
from workflow_runner.handlers import handlers
from workflow_runner.handlers.commands import ActionFinished
from workflow_runner.handlers.ports import UnitOfWorkFactory

GROUP_ID = "workflow-runner"
TOPICS = (topics.ACTION_LIFECYCLE,)


def to_command(delivered: Delivered) -> ActionFinished | None:
    """The ActionFinished command for an ActionCompleted/ActionDeleted envelope, else None."""
    envelope = delivered.envelope
    data = envelope.data
    if isinstance(data, ActionCompleted):
        return ActionFinished(
            message_id=envelope.id,
            tenant=envelope.tenant,
            kind=FinishKind.COMPLETED,
            action_id=data.action_id,
            enrollment_id=data.enrollment_id,
            step_id=data.step_id,
            at=data.completed_at,
            outcome=data.outcome,
        )
    if isinstance(data, ActionDeleted):
        return ActionFinished(
            message_id=envelope.id,
            tenant=envelope.tenant,
            kind=FinishKind.DELETED,
            action_id=data.action_id,
            enrollment_id=data.enrollment_id,
            step_id=data.step_id,
            at=data.deleted_at,
            outcome=None,
        )
    return None


def batch_handler(uow: UnitOfWorkFactory) -> BatchHandler:
    """Apply each fetched batch in one transaction (the consumer commits offsets after it returns;
    if it raises, the consumer retries message by message)."""

    async def handle(batch: Sequence[Delivered]) -> None:
        commands = [c for c in (to_command(d) for d in batch) if c is not None]
        if commands:
            await handlers.actions_finished(uow(), commands)

    return handle
