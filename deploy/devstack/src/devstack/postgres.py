"""PostgreSQL from the OS packages, in a data directory of its own on a free loopback port.

PostgreSQL refuses to run as root. When this process is root, ``initdb`` and ``pg_ctl`` run as the
``postgres`` user (created by Debian's package) through ``runuser``, and the data directory is
owned by that user. The data directory must be reachable by that user: when a parent of the run
directory is not traversable by others, the data directory goes under the system temp folder
instead (``<tmp>/ma-devstack-pg-<hash of run dir>``), recorded in ``stack.json``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack._util import ComponentError, free_port, port_is_free, run_checked, run_sync, tail

COMPONENT = "postgresql"
ROLE = "manual_actions"
_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,62}$")
# Unix socket paths are limited to 107 bytes; ".s.PGSQL.NNNNN" needs 15 of them.
_MAX_SOCKET_DIR = 90


@dataclass
class PostgresState:
    port: int
    data_dir: str
    socket_dir: str
    log_file: str
    bin_dir: str
    fsync: bool


def _traversable_by_others(path: Path) -> bool:
    for folder in (path, *path.parents):
        try:
            mode = folder.stat().st_mode
        except OSError:
            return False
        if not mode & stat.S_IXOTH:
            return False
    return True


class Postgres:
    """One PostgreSQL server for a stack. ``state`` is what ``stack.json`` records."""

    def __init__(self, run_dir: Path, bin_dir: Path, *, fsync: bool) -> None:
        self.run_dir = run_dir
        self.bin_dir = bin_dir
        self.fsync = fsync
        self.as_root = os.geteuid() == 0
        self.state: PostgresState | None = None

    # -- layout -------------------------------------------------------------------------------
    def _home(self) -> Path:
        """Folder owned by the server user holding data, socket and log."""
        preferred = self.run_dir / "postgres"
        if not self.as_root or _traversable_by_others(self.run_dir):
            return preferred
        digest = hashlib.sha256(str(self.run_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"ma-devstack-pg-{digest}"

    def _cmd(self, *args: str) -> list[str]:
        if self.as_root:
            return ["runuser", "-u", "postgres", "--", *args]
        return list(args)

    def _chown(self, path: Path) -> None:
        if not self.as_root:
            return
        try:
            user = pwd.getpwnam("postgres")
        except KeyError as exc:
            raise ComponentError(
                COMPONENT, "running as root but there is no 'postgres' user to run the server as"
            ) from exc
        os.chown(path, user.pw_uid, user.pw_gid)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, previous: dict[str, Any] | None) -> PostgresState:
        """Start the server (initdb first if needed); reuse it when it already runs."""
        if previous:
            state = PostgresState(**previous)
            if self._running(state):
                self.state = state
                return state
        home = self._home()
        data = home / "data"
        sock = home / "sock"
        log = home / "postgres.log"
        for folder in (home, sock):
            folder.mkdir(parents=True, exist_ok=True)
            self._chown(folder)
        # A folder too long for a Unix socket path means TCP only.
        sock_setting = "" if len(str(sock)) > _MAX_SOCKET_DIR else str(sock)
        if not (data / "PG_VERSION").is_file():
            if data.exists():
                shutil.rmtree(data)
            run_checked(
                self._cmd(
                    str(self.bin_dir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "--auth-host=trust",
                    "--auth-local=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ),
                component=COMPONENT,
                log_file=home / "initdb.log",
                timeout=300,
            )
        port = previous["port"] if previous and port_is_free(previous["port"]) else free_port()
        state = PostgresState(
            port=port,
            data_dir=str(data),
            socket_dir=sock_setting,
            log_file=str(log),
            bin_dir=str(self.bin_dir),
            fsync=self.fsync,
        )
        options = [
            "-c listen_addresses=127.0.0.1",
            f"-p {port}",
            f"-c unix_socket_directories='{sock_setting}'",
            f"-c fsync={'on' if self.fsync else 'off'}",
            # Without fsync, waiting for the WAL flush buys nothing either.
            f"-c synchronous_commit={'on' if self.fsync else 'off'}",
            f"-c full_page_writes={'on' if self.fsync else 'off'}",
            "-c max_connections=200",
            "-c shared_buffers=128MB",
        ]
        run_checked(
            self._cmd(
                str(self.bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-o",
                " ".join(options),
                "-w",
                "-t",
                "60",
                "start",
            ),
            component=COMPONENT,
            log_file=home / "pg_ctl.log",
            timeout=90,
        )
        self.state = state
        try:
            run_sync(self._wait_ready(state, within=30))
            run_sync(self._ensure_role(state))
        except Exception as exc:
            raise ComponentError(
                COMPONENT, f"server started but does not answer: {exc}\n{tail(log)}", log
            ) from exc
        return state

    def _running(self, state: PostgresState) -> bool:
        pid_file = Path(state.data_dir) / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        try:
            run_sync(self._wait_ready(state, within=3))
        except Exception:
            return False
        return True

    def stop(self, *, timeout: float = 30, mode: str = "fast") -> None:
        """``pg_ctl stop -m <mode>``; falls back to ``-m immediate`` if that does not finish."""
        home = self._home()
        data = home / "data"
        if not (data / "postmaster.pid").exists():
            return
        status = subprocess.run(
            self._cmd(str(self.bin_dir / "pg_ctl"), "-D", str(data), "status"),
            capture_output=True,
            check=False,
        )
        if status.returncode == 3:  # not running (a stale postmaster.pid after a crash)
            return
        try:
            run_checked(
                self._cmd(
                    str(self.bin_dir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-m",
                    mode,
                    "-w",
                    "-t",
                    str(int(timeout)),
                    "stop",
                ),
                component=COMPONENT,
                log_file=home / "pg_ctl.log",
                timeout=timeout + 10,
            )
        except ComponentError:
            if (data / "postmaster.pid").exists():
                run_checked(
                    self._cmd(
                        str(self.bin_dir / "pg_ctl"),
                        "-D",
                        str(data),
                        "-m",
                        "immediate",
                        "-w",
                        "stop",
                    ),
                    component=COMPONENT,
                    log_file=home / "pg_ctl.log",
                    timeout=30,
                )

    def remove_files(self) -> None:
        """Delete the server's folder (data, socket, log), wherever it lives."""
        shutil.rmtree(self._home(), ignore_errors=True)

    # -- SQL ----------------------------------------------------------------------------------
    @staticmethod
    async def _connect(state: PostgresState, user: str = "postgres", database: str = "postgres") -> Any:
        import asyncpg

        return await asyncpg.connect(
            host="127.0.0.1", port=state.port, user=user, database=database, timeout=5
        )

    async def _wait_ready(self, state: PostgresState, within: float) -> None:
        deadline = time.monotonic() + within
        while True:
            try:
                conn = await self._connect(state)
                await conn.close()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def _ensure_role(self, state: PostgresState) -> None:
        conn = await self._connect(state)
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", ROLE)
            if not exists:
                # Superuser locally: services create schemas, extensions and advisory locks freely.
                await conn.execute(f'CREATE ROLE "{ROLE}" LOGIN SUPERUSER')
            db_exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", ROLE)
            if not db_exists:
                await _create_database(conn, ROLE)
        finally:
            await conn.close()

    def base_url(self, state: PostgresState) -> str:
        """``postgresql+asyncpg://manual_actions@127.0.0.1:<port>`` (no database part)."""
        return f"postgresql+asyncpg://{ROLE}@127.0.0.1:{state.port}"

    def database_url(self, state: PostgresState, name: str) -> str:
        """Create database ``name`` if missing; return its SQLAlchemy asyncpg URL."""
        if not _DB_NAME.match(name):
            raise ValueError(f"database name {name!r} must match {_DB_NAME.pattern}")
        run_sync(self._ensure_database(state, name))
        return f"{self.base_url(state)}/{name}"

    async def _ensure_database(self, state: PostgresState, name: str) -> None:
        conn = await self._connect(state)
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                await _create_database(conn, name)
        finally:
            await conn.close()


async def _create_database(conn: Any, name: str) -> None:
    import asyncpg

    try:
        await conn.execute(f'CREATE DATABASE "{name}" OWNER "{ROLE}"')
    except asyncpg.DuplicateDatabaseError:
        pass  # created concurrently by another process: that is the outcome we wanted
    except asyncpg.UniqueViolationError:
        pass  # same race, reported through pg_database's unique index
