"""serve(): HTTP and background loops in one process; SIGTERM stops it cleanly, a crash fails it.

The signal tests run a real service process (``python -c`` with the script below) so that the
exit status and the signal handling are the real ones.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from manual_actions.http import create_app
from manual_actions.service import serve
from manual_actions.settings import ServiceSettings

SERVICE_SCRIPT = """
import asyncio, sys
from manual_actions.http import create_app
from manual_actions.logging import configure_logging
from manual_actions.service import serve
from manual_actions.settings import ServiceSettings

port, mode = int(sys.argv[1]), sys.argv[2]
configure_logging("serve-test")

async def worker():
    try:
        while True:
            await asyncio.sleep(0.05)
            if mode == "crash":
                await asyncio.sleep(0.5)
                raise RuntimeError("worker lost its broker")
    except asyncio.CancelledError:
        print("MARK worker-cancelled", flush=True)
        raise

async def closing():
    print("MARK on-shutdown", flush=True)

settings = ServiceSettings(service_name="serve-test", http_port=port)
asyncio.run(serve(create_app("serve-test"), settings, background=[worker], on_shutdown=[closing]))
print("MARK returned", flush=True)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_service(mode: str) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", SERVICE_SCRIPT, str(port), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ},
    )
    return process, port


def wait_healthy(process: subprocess.Popen[str], port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[0]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"service did not become healthy: {process.communicate()[0]}")


def test_sigterm_stops_http_and_loops_then_runs_on_shutdown() -> None:
    process, port = start_service("steady")
    try:
        wait_healthy(process, port)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()

    assert process.returncode == 0, output
    marks = [line for line in output.splitlines() if line.startswith("MARK")]
    assert marks == ["MARK worker-cancelled", "MARK on-shutdown", "MARK returned"], output
    logs = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert any(log["message"] == "Received SIGTERM; stopping" for log in logs)
    assert all(log["service"] == "serve-test" for log in logs)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)


def test_crashing_loop_stops_the_process_with_non_zero_exit() -> None:
    process, _ = start_service("crash")
    try:
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()

    assert process.returncode == 1, output
    marks = [line for line in output.splitlines() if line.startswith("MARK")]
    assert marks == ["MARK on-shutdown"], output  # the crashed loop is not cancelled; no normal return
    logs = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    crash = next(log for log in logs if "crashed" in log["message"])
    assert crash["level"] == "ERROR" and crash["loop"] == "worker"
    assert "RuntimeError: worker lost its broker" in crash["exception"]


async def test_in_process_crash_cancels_other_loops_before_on_shutdown() -> None:
    events: list[str] = []

    async def steady() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            events.append("steady cancelled")
            raise

    async def crashing() -> None:
        await asyncio.sleep(0.3)
        raise ValueError("poison")

    async def first() -> None:
        events.append("first shutdown")

    async def failing() -> None:
        events.append("failing shutdown")
        raise OSError("already closed")

    async def last() -> None:
        events.append("last shutdown")

    settings = ServiceSettings(service_name="serve-inproc", http_port=0)
    started = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        await serve(
            create_app("serve-inproc"),
            settings,
            background=[steady, crashing],
            on_shutdown=[first, failing, last],
        )

    assert exit_info.value.code == 1
    assert events == ["steady cancelled", "first shutdown", "failing shutdown", "last shutdown"]
    assert time.monotonic() - started < 10
    # The handlers were removed again: this loop's SIGTERM handling is back to what it was.
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None)


async def test_loop_that_returns_early_also_stops_the_process() -> None:
    async def done_too_soon() -> None:
        await asyncio.sleep(0.1)

    settings = ServiceSettings(service_name="serve-inproc", http_port=0)
    with pytest.raises(SystemExit) as exit_info:
        await serve(create_app("serve-inproc"), settings, background=[done_too_soon])
    assert exit_info.value.code == 1
