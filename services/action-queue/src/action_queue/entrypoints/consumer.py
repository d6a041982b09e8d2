"""The Kafka side: the batch handler the ``BatchConsumer`` calls for group ``action-queue``."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from action_queue.handlers import directory, materialise
from action_queue.handlers.ports import UnitOfWorkFactory
from manual_actions.contracts import topics
from manual_actions.kafka import BatchHandler, Delivered, PermanentError

GROUP_ID = "action-queue"
TOPICS = (topics.ACTION_LIFECYCLE, topics.SMS_RESULTS, topics.CALL_RESULTS, topics.CONTACTS, topics.USERS,
          topics.ACTION_COMMANDS)


def batch_handler(uow: UnitOfWorkFactory) -> BatchHandler:
    """Apply each fetched batch. Runs of consecutive messages go, in order, to ``directory``
    (users, contacts, CancelAction) or ``materialise`` (actions and results), each run in one
    transaction; offsets are committed by the consumer after the last one, and a crash in between
    repeats only what the inboxes absorb. ``UnprocessableMessage`` becomes ``PermanentError`` so the
    consumer dead-letters that message (after retrying the batch message by message)."""

    async def handle(batch: Sequence[Delivered]) -> None:
        envelopes = [delivered.envelope for delivered in batch]
        try:
            for ours, run in itertools.groupby(envelopes, key=directory.handles):
                if ours:
                    await directory.apply_batch(uow(), run)
                else:
                    await materialise.apply_batch(uow(), list(run))
        except materialise.UnprocessableMessage as exc:
            raise PermanentError(exc.detail) from exc

    return handle
