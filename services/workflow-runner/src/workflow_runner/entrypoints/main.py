"""Process start of workflow-runner: migrate, ensure topics, then serve HTTP, the outbox relay and the
action-lifecycle consumer in one event loop (``manual_actions.service.serve``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI
from pydantic import Field
from sqlalchemy.ext.asyncio import AsyncEngine

from manual_actions.kafka import BatchConsumer
from manual_actions.logging import configure_logging
from manual_actions.runtime import open_identity_store, start_core
from manual_actions.service import BackgroundLoop, run_service, serve
from manual_actions.settings import ServiceSettings
from workflow_runner.adapters import migrations
from workflow_runner.adapters.bulk_sql import SqlBulkUnitOfWorkFactory
from workflow_runner.adapters.sql import SqlUnitOfWorkFactory
from workflow_runner.entrypoints import bulk
from workflow_runner.entrypoints.consumer import GROUP_ID, HANDLED_TYPES, TOPICS, batch_handler
from workflow_runner.entrypoints.http import build_app
from workflow_runner.entrypoints.import_pool import PooledValidator
from workflow_runner.entrypoints.timers import TimerLoop

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
    timer_interval_ms: int = Field(
        default=500, ge=10, description="How often the timer loop looks for due waits and timeouts."
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
    core = await start_core(settings, MIGRATIONS_DIR)
    identity, identity_engine = await open_identity_store(settings)
    engine, producer = core.engine, core.producer
    uow = SqlUnitOfWorkFactory(engine)
    consumer = BatchConsumer(
        settings,
        group_id=settings.consumer_group_id,
        topics=TOPICS,
        handler=batch_handler(uow),
        producer=producer,
        handled_types=HANDLED_TYPES,
    )
    validator = PooledValidator()
    app = build_app(uow, identity, engine, validate_import=validator)
    timer_loop = TimerLoop(uow, interval=settings.timer_interval_ms / 1000)
    app.state.bulk_uow = SqlBulkUnitOfWorkFactory(engine)
    app.include_router(bulk.router)
    bulk_loop = bulk.BulkEnrollmentLoop(app.state.bulk_uow)
    return Service(
        app=app,
        engine=engine,
        uow=uow,
        background=[core.relay.run, consumer.run, timer_loop.run, bulk_loop.run,
                    identity.listen_for_revocations],
        # The consumer dead-letters through the producer, so it stops first.
        on_shutdown=[
            timer_loop.stop,
            bulk_loop.stop,
            identity.stop_listening,
            consumer.stop,
            *core.shutdown_steps(),
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
    run_service(run(settings))


if __name__ == "__main__":
    main()
