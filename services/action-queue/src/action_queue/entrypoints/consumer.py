"""The Kafka side: the batch handler the ``BatchConsumer`` calls for group ``action-queue``."""

from __future__ import annotations

from collections.abc import Sequence

from action_queue.handlers import materialise
from action_queue.handlers.ports import UnitOfWorkFactory
from manual_actions.contracts import topics
from manual_actions.kafka import BatchHandler, Delivered, PermanentError

GROUP_ID = "action-queue"
TOPICS = (topics.ACTION_LIFECYCLE, topics.SMS_RESULTS, topics.CALL_RESULTS, topics.CONTACTS)


def batch_handler(uow: UnitOfWorkFactory) -> BatchHandler:
    """Apply each fetched batch in one transaction. ``UnprocessableMessage`` becomes ``PermanentError``
    so the consumer dead-letters that message (after retrying the batch message by message)."""

    async def handle(batch: Sequence[Delivered]) -> None:
        try:
            await materialise.apply_batch(uow(), [delivered.envelope for delivered in batch])
        except materialise.UnprocessableMessage as exc:
            raise PermanentError(exc.detail) from exc

    return handle
