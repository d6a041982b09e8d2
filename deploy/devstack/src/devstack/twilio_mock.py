"""Starts the Twilio contract mock: Prism on a private port, the callback proxy on the public one."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from devstack._util import (
    ComponentError,
    free_port,
    pid_alive,
    port_answers,
    port_is_free,
    read_pid,
    spawn,
    tail,
    terminate,
)
from devstack.install import patched_spec_path, prism_bin

PRISM = "twilio mock (prism)"
PROXY = "twilio mock (proxy)"


@dataclass
class TwilioMockState:
    prism_pid: int
    prism_port: int
    proxy_pid: int
    port: int
    prism_log: str
    proxy_log: str

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class TwilioMock:
    def __init__(self, run_dir: Path, node: str, *, account_sid: str, auth_token: str) -> None:
        self.home = run_dir / "twilio-mock"
        self.node = node
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.marker = str(self.home)

    def start(self, previous: dict[str, Any] | None, *, timeout: float = 120) -> TwilioMockState:
        if previous:
            state = TwilioMockState(**previous)
            if (
                pid_alive(state.prism_pid, self.marker)
                and pid_alive(state.proxy_pid, self.marker)
                and self._healthy(state.base_url)
            ):
                return state
            self.stop()
        self.home.mkdir(parents=True, exist_ok=True)
        prism_log = self.home / "prism.log"
        proxy_log = self.home / "proxy.log"
        prism_port = free_port()
        port = previous["port"] if previous and port_is_free(previous["port"]) else free_port()
        # The run dir in --tag / the spec path ties each process to this stack (pid_alive marker).
        spec_link = self.home / "twilio_api_v2010.json"
        if spec_link.is_symlink() or spec_link.exists():
            spec_link.unlink()
        spec_link.symlink_to(patched_spec_path())
        prism_pid = spawn(
            [
                self.node,
                str(prism_bin().resolve()),
                "mock",
                str(spec_link),
                "-h",
                "127.0.0.1",
                "-p",
                str(prism_port),
                "--errors",
                "false",
                "-v",
                "warn",
            ],
            log_file=prism_log,
            pid_file=self.home / "prism.pid",
            cwd=self.home,
        )
        env = dict(os.environ)
        env["TWILIO_MOCK_ACCOUNT_SID"] = self.account_sid
        env["TWILIO_MOCK_AUTH_TOKEN"] = self.auth_token
        proxy_pid = spawn(
            [
                sys.executable,
                "-m",
                "devstack.twilio_proxy",
                "--port",
                str(port),
                "--prism-url",
                f"http://127.0.0.1:{prism_port}",
                "--tag",
                self.marker,
            ],
            log_file=proxy_log,
            pid_file=self.home / "proxy.pid",
            cwd=self.home,
            env=env,
        )
        state = TwilioMockState(
            prism_pid=prism_pid,
            prism_port=prism_port,
            proxy_pid=proxy_pid,
            port=port,
            prism_log=str(prism_log),
            proxy_log=str(proxy_log),
        )
        deadline = time.monotonic() + timeout
        while True:
            if not pid_alive(prism_pid, self.marker):
                self.stop()
                raise ComponentError(PRISM, f"exited during startup:\n{tail(prism_log)}", prism_log)
            if not pid_alive(proxy_pid, self.marker):
                self.stop()
                raise ComponentError(PROXY, f"exited during startup:\n{tail(proxy_log)}", proxy_log)
            if port_answers(prism_port) and self._healthy(state.base_url):
                return state
            if time.monotonic() > deadline:
                self.stop()
                which, log = (PRISM, prism_log) if not port_answers(prism_port) else (PROXY, proxy_log)
                raise ComponentError(which, f"not ready within {timeout:.0f} s", log)
            time.sleep(0.3)

    def stop(self, *, timeout: float = 10) -> None:
        """Stop the proxy, then Prism (SIGTERM, SIGKILL after ``timeout``)."""
        terminate(read_pid(self.home / "proxy.pid"), self.marker, timeout=timeout)
        terminate(read_pid(self.home / "prism.pid"), self.marker, timeout=timeout)

    @staticmethod
    def _healthy(base_url: str) -> bool:
        try:
            response = httpx.get(base_url + "/__mock/health", timeout=2.0, trust_env=False)
        except httpx.HTTPError:
            return False
        return response.status_code == 200
