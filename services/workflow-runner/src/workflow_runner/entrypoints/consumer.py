"""The Kafka side: the batch handler the ``BatchConsumer`` of group ``workflow-runner`` calls.

From the action lifecycle topic it takes the events that say an action left the queue
(ActionCompleted, ActionDeleted, ActionSkipped, ActionExpired, ActionFailed) and continues the
enrollments waiting on those actions; from the inbound SMS topic it takes SmsReceived (replies,
opt-out/opt-in keywords: goals). Every other message type there (our own ActionQueued, ...) is not
ours to act on and is passed over.
"""

from __future__ import annotations

from collections.abc import Sequence

from manual_actions.contracts import topics
from manual_actions.contracts.messages import (
    ActionCompleted,
    ActionDeleted,
    ActionExpired,
    ActionFailed,
    ActionSkipped,
    SmsReceived,
)
from manual_actions.kafka import BatchHandler, Delivered
from workflow_runner.domain.runner import FinishKind
from workflow_runner.handlers import handlers, replies
from workflow_runner.handlers.commands import ActionFinished, ReplyReceived
from workflow_runner.handlers.ports import UnitOfWorkFactory

GROUP_ID = "workflow-runner"
TOPICS = (topics.ACTION_LIFECYCLE, topics.SMS_INBOUND)
# What the handler acts on; the rest of the lifecycle topic (our own ActionQueued and every
# intermediate transition, most of its traffic) is passed over by the consumer without decoding.
HANDLED_TYPES = frozenset(
    m.message_type
    for m in (ActionCompleted, ActionDeleted, ActionSkipped, ActionExpired, ActionFailed, SmsReceived)
)


def to_command(delivered: Delivered) -> ActionFinished | None:
    """The ActionFinished command for an envelope saying an action left the queue, else None."""
    envelope = delivered.envelope
    data = envelope.data
    common = {"message_id": envelope.id, "tenant": envelope.tenant}
    if isinstance(data, ActionCompleted):
        return ActionFinished(
            **common,
            kind=FinishKind.COMPLETED,
            action_id=data.action_id,
            enrollment_id=data.enrollment_id,
            step_id=data.step_id,
            at=data.completed_at,
            outcome=data.outcome,
        )
    if isinstance(data, ActionDeleted):
        return ActionFinished(
            **common,
            kind=FinishKind.DELETED,
            action_id=data.action_id,
            enrollment_id=data.enrollment_id,
            step_id=data.step_id,
            at=data.deleted_at,
            outcome=None,
            reason=data.reason,
        )
    if isinstance(data, ActionSkipped):
        return ActionFinished(
            **common,
            kind=FinishKind.SKIPPED,
            action_id=data.action_id,
            enrollment_id=None,
            step_id=None,
            at=data.skipped_at,
            reason=data.reason,
        )
    if isinstance(data, ActionExpired):
        return ActionFinished(
            **common,
            kind=FinishKind.EXPIRED,
            action_id=data.action_id,
            enrollment_id=None,
            step_id=None,
            at=data.expired_at,
        )
    if isinstance(data, ActionFailed):
        return ActionFinished(
            **common,
            kind=FinishKind.FAILED,
            action_id=data.action_id,
            enrollment_id=None,
            step_id=None,
            at=data.failed_at,
            reason=data.reason,
        )
    return None


def to_reply(delivered: Delivered) -> ReplyReceived | None:
    """The ReplyReceived command for an SmsReceived envelope, else None."""
    envelope = delivered.envelope
    data = envelope.data
    if not isinstance(data, SmsReceived):
        return None
    return ReplyReceived(
        message_id=envelope.id,
        tenant=envelope.tenant,
        from_phone=data.from_phone,
        keyword=data.keyword,
        body=data.body,
        at=data.received_at,
    )


def batch_handler(uow: UnitOfWorkFactory) -> BatchHandler:
    """Apply each fetched batch: the finished actions in one transaction, then the inbound SMS in
    another (the consumer commits offsets after it returns; if it raises, the consumer retries
    message by message, and the inbox makes the part already committed a no-op)."""

    async def handle(batch: Sequence[Delivered]) -> None:
        commands = [c for c in (to_command(d) for d in batch) if c is not None]
        if commands:
            await handlers.actions_finished(uow(), commands)
        replies_in = [r for r in (to_reply(d) for d in batch) if r is not None]
        if replies_in:
            await replies.replies_received(uow(), replies_in)

    return handle
