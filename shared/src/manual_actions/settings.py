"""Settings from environment variables, with defaults that work on a developer machine.

Every service subclasses ``ServiceSettings``; nothing is read from files. Variable names are the
field names in upper case (``KAFKA_BOOTSTRAP_SERVERS``, ``DATABASE_URL``, ``HTTP_PORT`` ...).
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    service_name: str = Field(description="Name used in logs, metrics, event source and consumer groups.")
    http_host: str = "127.0.0.1"
    http_port: int = 8100
    log_level: str = "INFO"

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_client_id: str | None = None
    consumer_batch_max_records: int = Field(default=500, ge=1)
    consumer_batch_timeout_ms: int = Field(default=100, ge=1)

    database_url: str = Field(
        default="postgresql+asyncpg://manual_actions@127.0.0.1:5432/manual_actions",
        description="This service's own database (SQLAlchemy async URL).",
    )
    identity_database_url: str = Field(
        default="postgresql+asyncpg://manual_actions@127.0.0.1:5432/identity",
        description="The identity store that holds tenants and hashed API tokens.",
    )
    outbox_poll_interval_ms: int = Field(default=200, ge=1)
    outbox_batch_size: int = Field(default=500, ge=1)
