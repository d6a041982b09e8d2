"""The Stack object around the running session stack: state file, reuse, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from devstack import TEST_ACCOUNT_SID, ComponentError, Stack
from devstack._util import pid_alive
from devstack.install import find_pg_bin
from devstack.postgres import Postgres

pytestmark = pytest.mark.integration


def test_stack_json_describes_the_running_stack(stack: Stack) -> None:
    recorded = json.loads((stack.run_dir / "stack.json").read_text())
    assert recorded["running"] is True
    assert recorded["kafka_bootstrap"] == stack.kafka_bootstrap
    assert recorded["twilio_base_url"] == stack.twilio_base_url
    assert recorded["twilio_auth_token"] == stack.twilio_auth_token
    assert stack.twilio_account_sid == TEST_ACCOUNT_SID
    assert len(stack.twilio_auth_token) == 32
    for path in recorded["logs"].values():
        assert (stack.run_dir / "x").parent.exists() and path

    loaded = Stack.load(stack.run_dir)
    assert loaded.env() == stack.env()
    assert loaded.database_url("manual_actions").endswith("/manual_actions")


def test_starting_again_reuses_the_running_components(stack: Stack) -> None:
    before = json.loads((stack.run_dir / "stack.json").read_text())
    again = Stack(stack.run_dir, fsync=False).start()
    after = json.loads((stack.run_dir / "stack.json").read_text())
    assert again.kafka_bootstrap == stack.kafka_bootstrap
    assert again.twilio_auth_token == stack.twilio_auth_token
    assert after["kafka"]["pid"] == before["kafka"]["pid"]
    assert after["twilio"]["proxy_pid"] == before["twilio"]["proxy_pid"]
    assert after["postgres"]["port"] == before["postgres"]["port"]


def test_cli_status_reports_every_component_alive(stack: Stack) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "devstack.cli", "--run-dir", str(stack.run_dir), "status"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["alive"] == {"kafka": True, "postgres": True, "prism": True, "twilio_proxy": True}
    assert status["kafka_bootstrap"] == stack.kafka_bootstrap


def test_a_failed_start_names_the_component_and_leaves_nothing_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An option the JVM refuses: Kafka cannot start, the other two can.
    monkeypatch.setenv("MA_KAFKA_JVM_OPTS", "-XX:+NoSuchOptionForDevstackTests")
    broken = Stack(tmp_path / "broken", fsync=False)
    try:
        with pytest.raises(ComponentError) as caught:
            broken.start(timeout=60)
        assert caught.value.component == "kafka"
        assert caught.value.log_file is not None and caught.value.log_file.exists()

        run = tmp_path / "broken"
        for pid_file in (run / "twilio-mock" / "prism.pid", run / "twilio-mock" / "proxy.pid"):
            pid = int(pid_file.read_text())
            assert not pid_alive(pid, str(run / "twilio-mock")), f"{pid_file.name} still running"
        # pytest's tmp dirs are private (0700): PostgreSQL's folder went to the temp fallback.
        pg_bin = find_pg_bin()
        assert pg_bin is not None
        pg_home = Postgres(run, pg_bin, fsync=False)._home()
        assert pg_home.name.startswith("ma-devstack-pg-")
        assert (pg_home / "data" / "PG_VERSION").exists()  # it was initialised and started ...
        assert not (pg_home / "data" / "postmaster.pid").exists()  # ... and stopped again
    finally:
        broken.remove()
