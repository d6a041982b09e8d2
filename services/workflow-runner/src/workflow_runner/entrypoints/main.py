"""Process start of workflow-runner: migrate, ensure topics, then serve HTTP, the outbox relay and the
action-lifecycle consumer in one event loop (``manual_actions.service.serve``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI
from pydantic import Field
from sqlalchemy.ext.asyncio import AsyncEngine

from manual_actions.auth import IdentityStore
from manual_actions.db import create_engine, ensure_database, run_migrations
from manual_actions.kafka import BatchConsumer, create_producer, ensure_topics
from manual_actions.logging import configure_logging
from manual_actions.outbox import OutboxRelay
from manual_actions.service import BackgroundLoop, serve
from manual_actions.settings import ServiceSettings
from workflow_runner.adapters import migrations
from workflow_runner.adapters.sql import SqlUnitOfWorkFactory
from workflow_runner.entrypoints.consumer import GROUP_ID, TOPICS, batch_handler
from workflow_runner.entrypoints.http import build_app
from workflow_runner.entrypoints.import_pool import PooledValidator

MIGRATIONS_DIR = Path(migrations.__file__).parent


class Settings(ServiceSettings):
    service_name: str = "workflow-runner"
    http_port: int = 8101
    database_url: str = "postgresql+asyncpg://manual_actions@127.0.0.1:5432/workflow_runner"
    consumer_group_id: str = Field(
        default=GROUP_ID,
        min_length=1,
        description="Kafka consumer group; replicas of one deployment share it.",
    )


@dataclass
class Service:
    """A wired, not yet running workflow-runner: the app, the loops to run, and what to close after."""

    app: FastAPI
    engine: AsyncEngine
    uow: SqlUnitOfWorkFactory
    background: list[BackgroundLoop] = field(default_factory=list)
    on_shutdown: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


async def build_service(settings: Settings) -> Service:
    """Prepare the database and topics and wire every component (also used by the integration tests)."""
    await ensure_database(settings.database_url)
    await run_migrations(MIGRATIONS_DIR, settings.database_url)
    await ensure_topics(settings.kafka_bootstrap_servers)

    engine = create_engine(settings.database_url)
    identity_engine = create_engine(settings.identity_database_url, pool_size=2)
    identity = IdentityStore(identity_engine)
    await identity.create_schema()

    producer = create_producer(settings)
    await producer.start()
    relay = OutboxRelay(
        engine,
        producer,
        batch_size=settings.outbox_batch_size,
        poll_interval_ms=settings.outbox_poll_interval_ms,
    )
    uow = SqlUnitOfWorkFactory(engine)
    consumer = BatchConsumer(
        settings,
        group_id=settings.consumer_group_id,
        topics=TOPICS,
        handler=batch_handler(uow),
        producer=producer,
    )
    validator = PooledValidator()
    app = build_app(uow, identity, engine, validate_import=validator)
    return Service(
        app=app,
        engine=engine,
        uow=uow,
        background=[relay.run, consumer.run],
        # The consumer dead-letters through the producer, so it stops first.
        on_shutdown=[
            consumer.stop,
            relay.stop,
            producer.stop,
            engine.dispose,
            identity_engine.dispose,
            validator.close,
        ],
    )


async def run(settings: Settings) -> None:
    service = await build_service(settings)
    await serve(service.app, settings, background=service.background, on_shutdown=service.on_shutdown)


def main() -> None:
    settings = Settings()
    configure_logging(settings.service_name, settings.log_level)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
