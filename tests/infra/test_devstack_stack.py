"""The Stack object around the running session stack: state file, reuse, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from devstack import TEST_ACCOUNT_SID, Stack

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
