"""Kafka plumbing: the one producer factory, topic creation, and the one consumer loop."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer

from manual_actions.contracts import Envelope
from manual_actions.settings import ServiceSettings


@dataclass(frozen=True)
class Delivered:
    """One decoded message with where it came from (offsets travel with messages)."""

    envelope: Envelope[Any]
    topic: str
    partition: int
    offset: int


BatchHandler = Callable[[Sequence[Delivered]], Awaitable[None]]


class PermanentError(Exception):
    """Raised by a handler for a message that can never succeed; it is dead-lettered with this reason."""


def create_producer(settings: ServiceSettings) -> AIOKafkaProducer:
    """Idempotent producer, acks=all, JSON bytes in, keys as UTF-8 strings."""
    raise NotImplementedError


async def ensure_topics(bootstrap_servers: str) -> None:
    """Create every topic of the registry that does not exist yet (partitions, cleanup policy)."""
    raise NotImplementedError


class BatchConsumer:
    """The consumer loop every service uses.

    Fetches up to ``max_records`` messages, decodes them (undecodable ones go to the dead-letter
    topic with the reason), calls ``handler`` once with the decoded batch, and commits offset + 1
    per partition only after the handler returned. If the handler raises, the batch is retried
    message by message; a message that raises PermanentError (or any non-transient error
    ``max_attempts`` times) is dead-lettered with the reason, transient errors (database or broker
    unavailable) are retried with backoff and never dead-lettered. Auto-commit is off.
    """

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        group_id: str,
        topics: Sequence[str],
        handler: BatchHandler,
        producer: AIOKafkaProducer,
        max_attempts: int = 3,
    ) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        """Consume until ``stop()``."""
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError
