"""The dashboard's settings (environment variables; names are the field names in upper case)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import Field

from manual_actions.settings import ServiceSettings


class DashboardSettings(ServiceSettings):
    service_name: str = "dashboard"
    http_port: int = 8105

    faust_app_id: str = Field(
        default="manual-actions.dashboard",
        description="faust app id: the consumer group, and the prefix of the topics faust creates "
        "(``<id>-actions-changelog``, ``<id>-pending-changelog``, ``<id>-pending-deltas``).",
    )
    faust_datadir: str = Field(
        default="",
        description="faust's data directory (unused by the in-memory store, but faust creates it); "
        "empty means a directory named after the app id in the system's temporary directory.",
    )
    kafka_replication_factor: int = Field(
        default=1,
        ge=1,
        description="Replication factor of the topics faust creates (the same variable sizes the "
        "shared topics in ``ensure_topics``).",
    )
    faust_commit_interval_seconds: float = Field(
        default=1.0, gt=0, description="How often faust commits the offsets of processed messages."
    )
    faust_session_timeout_seconds: float = Field(
        default=30.0,
        ge=6.0,
        description="Consumer group session timeout: how long a crashed dashboard keeps its "
        "partitions before the group gives them to a new process (the broker's minimum is 6 s).",
    )
    pending_partitions: int = Field(
        default=6,
        ge=1,
        description="Partitions of the changelog and delta topics; must equal the action-lifecycle "
        "topic's partition count (faust refuses a changelog co-partitioned differently).",
    )

    def datadir(self) -> Path:
        if self.faust_datadir:
            return Path(self.faust_datadir)
        return Path(tempfile.gettempdir()) / self.faust_app_id
