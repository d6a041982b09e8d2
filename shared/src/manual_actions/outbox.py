"""Transactional outbox and inbox.

A service adds the envelopes it wants published to the ``outbox`` table in the same transaction
as its state change; ``OutboxRelay`` publishes them in insertion order and marks them published.
Consumers record each processed event id in the ``inbox`` table in the transaction of its effect,
so a redelivered event has no second effect.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiokafka import AIOKafkaProducer
from sqlalchemy import MetaData, Table
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from manual_actions.contracts import Envelope


def outbox_table(metadata: MetaData) -> Table:
    """Define ``outbox`` (id bigserial, message_id uuid unique, topic, key, value jsonb,
    headers jsonb, created_at, published_at nullable) on ``metadata``."""
    raise NotImplementedError


def inbox_table(metadata: MetaData) -> Table:
    """Define ``inbox`` (consumer text, message_id uuid, processed_at; primary key both) on ``metadata``."""
    raise NotImplementedError


async def add_to_outbox(session: AsyncSession | AsyncConnection, topic: str, envelope: Envelope[Any]) -> None:
    """Stage ``envelope`` for publication on ``topic`` (key = envelope.subject) in the caller's transaction.

    Also issues ``NOTIFY outbox`` so the relay wakes at once after commit.
    """
    raise NotImplementedError


async def first_time_seen(session: AsyncSession | AsyncConnection, consumer: str, message_id: uuid.UUID) -> bool:
    """Record ``message_id`` as processed by ``consumer``; False when it was already recorded."""
    raise NotImplementedError


class OutboxRelay:
    """Publishes outbox rows in id order; one active relay per database (advisory lock).

    Rows are marked published only after the broker acknowledged them, so a crash repeats
    rather than loses a message; consumers dedupe by envelope id.
    """

    def __init__(self, engine: AsyncEngine, producer: AIOKafkaProducer, *, batch_size: int = 500,
                 poll_interval_ms: int = 200) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        """Publish until ``stop()``; wakes on NOTIFY and at least every poll interval."""
        raise NotImplementedError

    async def publish_pending(self) -> int:
        """Publish what is pending now; return how many rows were published."""
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError
