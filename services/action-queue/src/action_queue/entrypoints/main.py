"""Process start of action-queue: migrate, ensure topics, then serve HTTP, the outbox relay and the
consumer in one event loop (``manual_actions.service.serve``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI
from pydantic import Field

from action_queue.adapters import migrations
from action_queue.adapters.sql import SqlUnitOfWorkFactory
from action_queue.entrypoints.consumer import GROUP_ID, TOPICS, batch_handler
from action_queue.entrypoints.http import build_app
from action_queue.entrypoints.maintenance import BulkLoop, MaintenanceLoop, OutOfOfficeLoop
from manual_actions.kafka import BatchConsumer
from manual_actions.logging import configure_logging
from manual_actions.runtime import open_identity_store, start_core
from manual_actions.service import BackgroundLoop, run_service, serve
from manual_actions.settings import ServiceSettings

MIGRATIONS_DIR = Path(migrations.__file__).parent


class Settings(ServiceSettings):
    service_name: str = "action-queue"
    http_port: int = 8102
    database_url: str = "postgresql+asyncpg://manual_actions@127.0.0.1:5432/action_queue"
    reservation_lease_seconds: int = Field(default=300, ge=1,
                                           description="How long Let's Start reserves an action to a person.")
    maintenance_interval_ms: int = Field(default=1000, ge=10,
                                         description="Pause of the maintenance loop between rounds.")
    maintenance_batch_size: int = Field(default=500, ge=1, description="Actions changed per transaction.")
    bulk_chunk_size: int = Field(default=1000, ge=1,
                                 description="Actions a bulk request changes per transaction.")
    out_of_office_interval_ms: int = Field(
        default=10_000, ge=10, description="Pause between rounds moving the actions of users who are out.")
    consumer_group_id: str = Field(default=GROUP_ID, min_length=1,
                                   description="Kafka consumer group; replicas of one deployment share it.")


@dataclass
class Service:
    """A wired, not yet running action-queue: the app, the loops to run, and what to close after."""

    app: FastAPI
    uow: SqlUnitOfWorkFactory
    background: list[BackgroundLoop] = field(default_factory=list)
    on_shutdown: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


async def build_service(settings: Settings) -> Service:
    """Prepare the database and topics and wire every component (also used by the integration tests)."""
    core = await start_core(settings, MIGRATIONS_DIR)
    identity, identity_engine = await open_identity_store(settings)
    engine, producer = core.engine, core.producer
    uow = SqlUnitOfWorkFactory(engine)
    consumer = BatchConsumer(settings, group_id=settings.consumer_group_id, topics=TOPICS,
                             handler=batch_handler(uow), producer=producer)
    app = build_app(uow, identity, engine, lease=timedelta(seconds=settings.reservation_lease_seconds))
    maintenance = MaintenanceLoop(uow, interval=settings.maintenance_interval_ms / 1000,
                                  batch_size=settings.maintenance_batch_size)
    bulk = BulkLoop(uow, chunk=settings.bulk_chunk_size)
    out_of_office = OutOfOfficeLoop(uow, interval=settings.out_of_office_interval_ms / 1000)
    return Service(
        app=app,
        uow=uow,
        background=[core.relay.run, consumer.run, maintenance.run, bulk.run, out_of_office.run],
        # The consumer dead-letters through the producer, so it stops first.
        on_shutdown=[consumer.stop, *core.shutdown_steps(), identity_engine.dispose],
    )


async def run(settings: Settings) -> None:
    service = await build_service(settings)
    await serve(service.app, settings, background=service.background, on_shutdown=service.on_shutdown)


def main() -> None:
    settings = Settings()
    configure_logging(settings.service_name, settings.log_level)
    run_service(run(settings))


if __name__ == "__main__":
    main()
