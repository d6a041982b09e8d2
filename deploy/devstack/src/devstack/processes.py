"""Starting the five services as separate processes against a running ``Stack``.

Used by the demo launcher (``./dev up``) and the end-to-end tests, so both run the services
exactly the same way: each one its own OS process, configured only through environment variables.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

TWILIO_TEST_FROM_NUMBER = "+15005550006"  # Twilio's magic "valid sender" test number


class StackLike(Protocol):
    kafka_bootstrap: str
    twilio_base_url: str
    twilio_account_sid: str
    twilio_auth_token: str

    def database_url(self, name: str) -> str: ...


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    database: str
    default_port: int


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("workflow-runner", "workflow_runner", 8101),
    ServiceSpec("action-queue", "action_queue", 8102),
    ServiceSpec("sms-sender", "sms_sender", 8103),
    ServiceSpec("dialer", "dialer", 8104),
    ServiceSpec("dashboard", "dashboard", 8105),
)
SPECS = {spec.name: spec for spec in SERVICES}


class ServiceFailedToStart(RuntimeError):
    pass


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free right now: every socket stays bound until all are known (ports
    picked one at a time can repeat, since each is free again once its socket closes)."""
    with ExitStack() as sockets:
        bound = [sockets.enter_context(socket.socket()) for _ in range(count)]
        for sock in bound:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in bound]


class ServiceProcesses:
    """The five services, started on the given ports with logs in ``run_dir/logs``."""

    def __init__(
        self,
        stack: StackLike,
        run_dir: Path,
        *,
        ports: Mapping[str, int] | None = None,
        database_prefix: str = "",
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.stack = stack
        self.run_dir = run_dir
        self.ports = {spec.name: (ports or {}).get(spec.name, spec.default_port) for spec in SERVICES}
        self.database_prefix = database_prefix
        self.extra_env = dict(extra_env or {})
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def log_path(self, name: str) -> Path:
        return self.run_dir / "logs" / f"{name}.log"

    def env_for(self, name: str) -> dict[str, str]:
        """The complete environment of one service process (its only configuration)."""
        spec = SPECS[name]
        env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTEST_", "COV_"))}
        env.update(
            SERVICE_NAME=name,
            HTTP_HOST="127.0.0.1",
            HTTP_PORT=str(self.ports[name]),
            LOG_LEVEL="INFO",
            KAFKA_BOOTSTRAP_SERVERS=self.stack.kafka_bootstrap,
            DATABASE_URL=self.stack.database_url(self.database_prefix + spec.database),
            IDENTITY_DATABASE_URL=self.stack.database_url(self.database_prefix + "identity"),
            TWILIO_ACCOUNT_SID=self.stack.twilio_account_sid,
            TWILIO_AUTH_TOKEN=self.stack.twilio_auth_token,
            TWILIO_API_BASE_URL=self.stack.twilio_base_url,
            TWILIO_FROM_NUMBER=TWILIO_TEST_FROM_NUMBER,
            PUBLIC_BASE_URL=self.url(name),
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    def start(
        self,
        names: Iterable[str] | None = None,
        *,
        timeout: float = 90.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Start the named services (all by default) and wait until each answers ``/ready``.

        ``env`` adds variables for this start only (e.g. a crash point for a recovery test).
        """
        wanted = list(names or self.ports)
        for name in wanted:
            self._spawn(name, env or {})
        deadline = time.monotonic() + timeout
        for name in wanted:
            self._wait_ready(name, deadline)

    def _spawn(self, name: str, extra: Mapping[str, str]) -> None:
        existing = self.processes.get(name)
        if existing is not None and existing.poll() is None:
            return
        executable = Path(sys.executable).parent / name
        log = self.log_path(name).open("ab")
        self.processes[name] = subprocess.Popen(
            [str(executable)],
            env={**self.env_for(name), **extra},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def _wait_ready(self, name: str, deadline: float) -> None:
        process = self.processes[name]
        last_error = "no answer"
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ServiceFailedToStart(
                    f"{name} exited with code {process.returncode}; see {self.log_path(name)}"
                )
            try:
                response = httpx.get(f"{self.url(name)}/ready", timeout=2.0)
                if response.status_code == 200:
                    self._check_identity(name)
                    return
                last_error = f"/ready answered {response.status_code}: {response.text[:300]}"
            except httpx.HTTPError as exc:
                last_error = repr(exc)
            time.sleep(0.2)
        raise ServiceFailedToStart(f"{name} not ready in time ({last_error}); see {self.log_path(name)}")

    def _check_identity(self, name: str) -> None:
        """The process answering on ``name``'s port is ``name``: another one (a port given twice,
        or taken by someone else before ``name`` could bind it) would pass for it while ``name``
        fails to bind and exits a moment later."""
        answered = httpx.get(f"{self.url(name)}/health", timeout=2.0).json().get("service")
        if answered != name:
            raise ServiceFailedToStart(
                f"port {self.ports[name]} of {name} is answered by {answered!r}; see {self.log_path(name)}"
            )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to one service and wait for it to exit; returns the exit code."""
        process = self.processes.pop(name)
        process.send_signal(sig)
        return process.wait(timeout=30)

    def wait_exit(self, name: str, timeout: float = 60.0) -> int:
        """Wait for a service to exit on its own (e.g. at a crash point); returns the exit code."""
        process = self.processes.pop(name)
        return process.wait(timeout=timeout)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM every service, SIGKILL what is still running after ``timeout``."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()

    def describe(self) -> dict[str, Any]:
        return {name: {"url": self.url(name), "log": str(self.log_path(name))} for name in self.ports}
