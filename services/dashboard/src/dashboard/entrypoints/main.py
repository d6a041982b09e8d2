"""Process start of the dashboard: settings, logging, topics, then HTTP and the faust app in one loop.

The faust app runs as a background loop of ``manual_actions.service.serve`` (faust's own web
server is disabled); ``/ready`` passes once its tables are recovered. There is no database of our
own: the counts live in faust tables rebuilt from their changelog topics at every start.
"""

from __future__ import annotations

import asyncio

from dashboard.entrypoints.api import build_app
from dashboard.entrypoints.streams import DashboardStreams
from dashboard.settings import DashboardSettings
from manual_actions.auth import IdentityStore
from manual_actions.db import create_engine
from manual_actions.kafka import ensure_topics
from manual_actions.logging import configure_logging
from manual_actions.service import serve


async def run(settings: DashboardSettings) -> None:
    """Run the dashboard until SIGTERM/SIGINT (or until the stream processor crashes)."""
    configure_logging(settings.service_name, settings.log_level)
    # The shared topics (action-lifecycle, dead-letters); faust creates its own internal topics.
    await ensure_topics(
        settings.kafka_bootstrap_servers, replication_factor=settings.kafka_replication_factor
    )
    identity_engine = create_engine(settings.identity_database_url, pool_size=2)
    streams = DashboardStreams(settings)
    app = build_app(streams, IdentityStore(identity_engine))
    await serve(app, settings, background=[streams.run], on_shutdown=[streams.stop, identity_engine.dispose])


def main() -> None:
    asyncio.run(run(DashboardSettings()))


if __name__ == "__main__":
    main()
