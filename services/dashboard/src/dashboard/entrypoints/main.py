"""Process start of the dashboard: settings, logging, topics, then HTTP and the faust app in one loop.

The faust app runs as a background loop of ``manual_actions.service.serve`` (faust's own web
server is disabled); ``/ready`` passes once its tables are recovered. There is no database of our
own: the counts live in faust tables rebuilt from their changelog topics at every start.
"""

from __future__ import annotations

import functools
import logging
import os
import threading

from dashboard.entrypoints.api import build_app
from dashboard.entrypoints.streams import DashboardStreams
from dashboard.settings import DashboardSettings
from manual_actions.kafka import ensure_topics
from manual_actions.logging import configure_logging
from manual_actions.runtime import open_identity_store
from manual_actions.service import run_service, serve

logger = logging.getLogger("dashboard.main")

# After the stream processor failed, how long the process may take to exit on its own.
EXIT_GRACE_SECONDS = 30.0


async def supervised_streams(streams: DashboardStreams) -> None:
    """The background loop: ``streams.run``, plus a guarantee that a failure ends the process.

    A crashed faust app can leave tasks that never finish cancelling, which would keep the
    process alive (and serving frozen counts) instead of exiting for its supervisor to restart it.
    """
    try:
        await streams.run()
    except Exception:
        timer = threading.Timer(EXIT_GRACE_SECONDS, _exit_now)
        timer.daemon = True
        timer.start()
        raise


def _exit_now() -> None:
    logger.error("Still running %.0f s after the stream processor failed; exiting", EXIT_GRACE_SECONDS)
    os._exit(1)


async def run(settings: DashboardSettings) -> None:
    """Run the dashboard until SIGTERM/SIGINT (or until the stream processor crashes)."""
    configure_logging(settings.service_name, settings.log_level)
    # The shared topics (action-lifecycle, dead-letters); faust creates its own internal topics.
    await ensure_topics(
        settings.kafka_bootstrap_servers, replication_factor=settings.kafka_replication_factor
    )
    identity, identity_engine = await open_identity_store(settings)
    streams = DashboardStreams(settings)
    app = build_app(streams, identity)
    await serve(
        app,
        settings,
        background=[functools.partial(supervised_streams, streams)],
        on_shutdown=[streams.stop, identity_engine.dispose],
    )


def main() -> None:
    run_service(run(DashboardSettings()))


if __name__ == "__main__":
    main()
