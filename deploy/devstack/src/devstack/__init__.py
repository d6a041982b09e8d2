"""Local infrastructure for the demo and the tests: real Kafka, real PostgreSQL, Twilio contract mock.

Public API: ``Stack`` (start/stop/status, addresses and credentials, ``database_url``),
``session_run_dir``/``reap_stale_test_runs`` for test sessions, ``ensure_installed`` and
``ComponentError`` (names the component and its log file).
"""

from devstack._util import ComponentError
from devstack.install import ensure_installed
from devstack.stack import TEST_ACCOUNT_SID, Stack, default_run_dir, reap_stale_test_runs, session_run_dir

__all__ = [
    "TEST_ACCOUNT_SID",
    "ComponentError",
    "Stack",
    "default_run_dir",
    "ensure_installed",
    "reap_stale_test_runs",
    "session_run_dir",
]
