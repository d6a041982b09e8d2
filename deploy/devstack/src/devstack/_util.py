"""Small helpers shared by the components: ports, child processes, errors."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ComponentError(RuntimeError):
    """A component could not be installed or started; the message names it and its log file."""

    def __init__(self, component: str, message: str, log_file: Path | None = None) -> None:
        self.component = component
        self.log_file = log_file
        where = f" (log: {log_file})" if log_file is not None else ""
        super().__init__(f"{component}: {message}{where}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host`` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers do: a port whose old connections linger in TIME_WAIT is reusable.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def port_answers(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int | None, marker: str | None = None) -> bool:
    """True when ``pid`` runs and (if given) its command line contains ``marker``.

    The marker (usually the run directory) guards against a recycled pid that now belongs to an
    unrelated process, which we must never signal.
    """
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except (OSError, IndexError):
        pass
    if marker is None:
        return True
    cmdline = _cmdline(pid)
    return cmdline is not None and marker in cmdline


def _cmdline(pid: int, wait: float = 1.0) -> str | None:
    """The command line of ``pid``; None if it has gone.

    Right after ``exec`` the kernel shows an empty command line for a moment (the parent of a
    ``Popen`` can get there first), so an empty one is read again for up to ``wait`` seconds.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        if raw or time.monotonic() > deadline:
            return raw.replace(b"\0", b" ").decode(errors="replace")
        time.sleep(0.01)


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def spawn(
    args: Sequence[str],
    *,
    log_file: Path,
    pid_file: Path,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Start a long-running child in its own session with output appended to ``log_file``.

    Its own session (process group) lets the stack outlive the command that started it (``ma-devstack
    up``) and lets ``stop`` signal the whole group. The pid goes to ``pid_file`` at once, so a stack
    whose start failed half-way can still be stopped.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            list(args),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    # Reap the child when it exits so a crashed component does not linger as a zombie while
    # the starting process keeps running (tests); pid_alive also treats zombies as dead.
    threading.Thread(target=proc.wait, daemon=True).start()
    pid_file.write_text(f"{proc.pid}\n")
    _cmdline(proc.pid)  # returns once exec has completed, see _cmdline
    return proc.pid


def terminate(pid: int | None, marker: str | None, *, timeout: float = 20.0) -> None:
    """SIGTERM the process group of ``pid``, then SIGKILL it if still alive after ``timeout``."""
    if not pid_alive(pid, marker):
        return
    assert pid is not None
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid, marker):
            return
        time.sleep(0.1)
    _signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and pid_alive(pid, marker):
        time.sleep(0.05)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code, even inside a running event loop.

    The Stack API is synchronous (used by the CLI and by fixtures called from async tests), so the
    coroutine gets a fresh loop in a short-lived thread.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def runner() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=runner, name="devstack-sync")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def run_checked(
    args: Sequence[str],
    *,
    component: str,
    log_file: Path,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
) -> None:
    """Run a short command to completion, appending its output to ``log_file``; raise on failure."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        log.write(f"\n$ {' '.join(args)}\n".encode())
        log.flush()
        try:
            result = subprocess.run(
                list(args),
                cwd=cwd,
                env=dict(env) if env is not None else None,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        except FileNotFoundError as exc:
            raise ComponentError(component, f"command not found: {args[0]}", log_file) from exc
        except subprocess.TimeoutExpired as exc:
            raise ComponentError(component, f"{args[0]} did not finish in {timeout:.0f} s", log_file) from exc
    if result.returncode != 0:
        raise ComponentError(
            component,
            f"{' '.join(args[:3])} ... exited with {result.returncode}:\n{tail(log_file)}",
            log_file,
        )
