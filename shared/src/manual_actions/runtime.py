"""The start-up every service with its own database and outbox shares.

``start_core`` prepares the database (created if missing, migrated to head under an advisory
lock) and the registry's topics, then opens the engine, the idempotent producer and the outbox
relay. The service adds its consumer, its own loops and its HTTP app around them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncEngine

from manual_actions.auth import IDENTITY_POOL_SIZE, IdentityStore
from manual_actions.db import create_engine, ensure_database, run_migrations
from manual_actions.kafka import create_producer, ensure_topics
from manual_actions.outbox import OutboxRelay
from manual_actions.settings import ServiceSettings


@dataclass(frozen=True)
class Core:
    """A started engine, producer and (not yet running) outbox relay of one service."""

    engine: AsyncEngine
    producer: AIOKafkaProducer
    relay: OutboxRelay

    def shutdown_steps(self) -> list[Callable[[], Awaitable[None]]]:
        """Close in dependency order: the relay publishes through the producer, both use the engine.

        Stop the service's consumer before these: it dead-letters through the producer.
        """
        return [self.relay.stop, self.producer.stop, self.engine.dispose]


async def start_core(settings: ServiceSettings, migrations_dir: Path) -> Core:
    await ensure_database(settings.database_url)
    await run_migrations(migrations_dir, settings.database_url)
    await ensure_topics(settings.kafka_bootstrap_servers)
    engine = create_engine(settings.database_url)
    producer = create_producer(settings)
    await producer.start()
    relay = OutboxRelay(
        engine,
        producer,
        batch_size=settings.outbox_batch_size,
        poll_interval_ms=settings.outbox_poll_interval_ms,
    )
    return Core(engine=engine, producer=producer, relay=relay)


async def open_identity_store(settings: ServiceSettings) -> tuple[IdentityStore, AsyncEngine]:
    """The identity store every API checks tokens against, with its (small) engine to dispose."""
    engine = create_engine(settings.identity_database_url, pool_size=IDENTITY_POOL_SIZE)
    identity = IdentityStore(engine)
    await identity.create_schema()
    return identity, engine
