"""pytest plugin with the session fixtures that start the REAL local infrastructure.

Registered through the ``pytest11`` entry point of this package, so the fixtures are available to
every test directory of the repository (``tests/``, ``shared/tests``, ``services/*/tests``,
``deploy/devstack/tests``) without a conftest importing them.

* ``stack``: a ``devstack.Stack`` with Kafka, PostgreSQL and the Twilio contract mock, started the
  first time a test asks for it (pure unit tests never pay for it) and stopped at the end of the
  session. Attributes: ``kafka_bootstrap``, ``postgres_url``, ``twilio_base_url``,
  ``twilio_account_sid``, ``twilio_auth_token``, ``logs``; methods ``database_url(name)`` (creates
  the database if missing, returns a ``postgresql+asyncpg://`` URL) and ``env()``.
* ``kafka_bootstrap``: ``stack.kafka_bootstrap``.

Each session gets its own run directory ``.run/test-<pid>`` and free ports, so tests never touch
a running demo. The directory is deleted after a session without failures and kept (with the
components' logs) otherwise. A component that cannot start fails the tests that need it with an
error naming the component and its log file; nothing is skipped.

``MA_TEST_RUN_DIR=<dir>`` runs the tests against a stack in that directory and leaves it running
afterwards, so that repeated local runs skip the start-up; stop it with
``ma-devstack --run-dir <dir> down``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from devstack import Stack


@pytest.fixture(scope="session")
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    # Imported here so that collecting the suite does not import the infrastructure code.
    from devstack import Stack, reap_stale_test_runs, session_run_dir

    kept_dir = os.environ.get("MA_TEST_RUN_DIR")
    if kept_dir:
        running = Stack(kept_dir, fsync=False).start()
        yield running
        return

    reap_stale_test_runs()
    # Test data is disposable: PostgreSQL runs without fsync.
    running = Stack(session_run_dir(), fsync=False).start()
    try:
        yield running
    finally:
        if request.session.testsfailed:
            running.stop(graceful=False)
            print(f"\nstack logs kept in {running.run_dir}")
        else:
            running.remove()


@pytest.fixture(scope="session")
def kafka_bootstrap(stack: Stack) -> str:
    """``host:port`` of the session's Kafka broker."""
    return stack.kafka_bootstrap
