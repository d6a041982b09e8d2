"""The local stack: Kafka, PostgreSQL and the Twilio mock started together in one run directory.

A run directory (default ``<repo>/.run/demo``; tests use ``<repo>/.run/test-<pid>``) holds every
component's data, configuration and logs, and ``stack.json``: the addresses, credentials, pids and
log files of a running stack, so that another process (the demo launcher, ``ma-devstack status``)
can use or stop it. Starting a stack whose components already run reuses them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from devstack._util import ComponentError, pid_alive
from devstack.install import ensure_installed, find_pg_bin
from devstack.kafka import Kafka, KafkaState
from devstack.paths import run_root
from devstack.postgres import Postgres, PostgresState
from devstack.twilio_mock import TwilioMock, TwilioMockState

STACK_FILE = "stack.json"
# A fixed, well-formed test account SID ("AC" + 32 hex): no real account has it.
TEST_ACCOUNT_SID = "AC" + "00000000000000000000000000000001"
_TEST_RUN = re.compile(r"^test-(\d+)$")


def default_run_dir() -> Path:
    """``MA_RUN_DIR`` if set, else ``<repo>/.run/demo`` (the demo's stack, see ``devstack.demo``)."""
    override = os.environ.get("MA_RUN_DIR")
    return Path(override).resolve() if override else run_root() / "demo"


class Stack:
    """Kafka + PostgreSQL + Twilio mock for one run directory.

    ``fsync=False`` makes PostgreSQL faster and unsafe on power loss: for tests only.
    ``auto_create_topics`` is off so that topics come from the registry (``ensure_topics``).
    """

    def __init__(
        self,
        run_dir: Path | str | None = None,
        *,
        fsync: bool = True,
        auto_create_topics: bool = False,
        kafka_partitions: int = 6,
    ) -> None:
        self.run_dir = Path(run_dir).resolve() if run_dir is not None else default_run_dir()
        self.fsync = fsync
        self.auto_create_topics = auto_create_topics
        self.kafka_partitions = kafka_partitions
        self._state: dict[str, Any] = self._read()

    # -- state file ---------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.run_dir / STACK_FILE

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._state, indent=2, sort_keys=True) + "\n")
        os.chmod(tmp, 0o600)  # holds the mock's auth token
        tmp.replace(self.state_file)

    @classmethod
    def load(cls, run_dir: Path | str | None = None) -> Stack:
        """The stack recorded in ``run_dir`` (started by another process); raises if none is."""
        stack = cls(run_dir)
        if not stack._state.get("running"):
            raise ComponentError("devstack", f"no running stack recorded in {stack.state_file}")
        return stack

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, *, timeout: float = 120) -> Stack:
        """Install what is missing, then start (or reuse) every component; write ``stack.json``.

        Raises ComponentError naming the component and its log file if one cannot start; the
        components that did start are stopped again in that case.
        """
        with self._lock():
            started = time.monotonic()
            self.run_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(self.run_dir, 0o755)  # PostgreSQL's user must reach its folder inside
            tools = ensure_installed()
            previous = self._read()
            account_sid = previous.get("twilio_account_sid") or TEST_ACCOUNT_SID
            auth_token = previous.get("twilio_auth_token") or secrets.token_hex(16)
            kafka = Kafka(
                self.run_dir,
                tools.java,
                auto_create_topics=self.auto_create_topics,
                partitions=self.kafka_partitions,
            )
            postgres = Postgres(self.run_dir, tools.pg_bin, fsync=self.fsync)
            mock = TwilioMock(self.run_dir, tools.node, account_sid=account_sid, auth_token=auth_token)

            # The three start independently; in parallel the JVM, node and PostgreSQL overlap.
            with ThreadPoolExecutor(max_workers=3, thread_name_prefix="devstack-start") as pool:
                seconds: dict[str, float] = {}

                def timed(name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
                    begin = time.monotonic()
                    try:
                        return fn(*args, **kwargs)
                    finally:
                        seconds[name] = round(time.monotonic() - begin, 2)

                futures = {
                    "postgres": pool.submit(timed, "postgres", postgres.start, previous.get("postgres")),
                    "kafka": pool.submit(timed, "kafka", kafka.start, previous.get("kafka"), timeout=timeout),
                    "twilio": pool.submit(
                        timed, "twilio", mock.start, previous.get("twilio"), timeout=timeout
                    ),
                }
                results: dict[str, Any] = {}
                errors: list[BaseException] = []
                for name, future in futures.items():
                    try:
                        results[name] = future.result()
                    except BaseException as exc:
                        errors.append(exc)
            if errors:
                # Leave nothing behind: stop what started and what failed half-way (pid files).
                self._stop_components(tools.pg_bin)
                if len(errors) == 1:
                    raise errors[0]
                raise ComponentError("devstack", "; ".join(str(e) for e in errors)) from errors[0]

            k: KafkaState = results["kafka"]
            p: PostgresState = results["postgres"]
            t: TwilioMockState = results["twilio"]
            self._state = {
                "running": True,
                "run_dir": str(self.run_dir),
                "started_at": time.time(),
                "start_seconds": round(time.monotonic() - started, 2),
                "component_start_seconds": seconds,
                "kafka_bootstrap": k.bootstrap,
                "postgres_url": postgres.base_url(p),
                "twilio_base_url": t.base_url,
                "twilio_account_sid": account_sid,
                "twilio_auth_token": auth_token,
                "logs": {
                    "kafka": k.log_file,
                    "postgres": p.log_file,
                    "prism": t.prism_log,
                    "twilio_proxy": t.proxy_log,
                },
                "kafka": k.__dict__,
                "postgres": p.__dict__,
                "twilio": t.__dict__,
            }
            self._write()
            return self

    def stop(self, *, graceful: bool = True) -> None:
        """Stop every component (SIGTERM, then SIGKILL after a timeout; PostgreSQL ``pg_ctl -m fast``).

        Idempotent, and works from the pid files even when a start failed before ``stack.json``
        was written. ``stack.json`` stays, marked not running, so a later start reuses the ports.
        ``graceful=False`` kills at once (PostgreSQL ``-m immediate``): for data about to be deleted.
        """
        if not self.run_dir.is_dir():
            return
        with self._lock():
            state = self._read()
            pg_bin = (state.get("postgres") or {}).get("bin_dir")
            self._stop_components(Path(pg_bin) if pg_bin else find_pg_bin(), graceful=graceful)
            if state:
                state["running"] = False
                self._state = state
                self._write()

    def _stop_components(self, pg_bin: Path | None, *, graceful: bool = True) -> None:
        errors: list[Exception] = []
        grace = 1.0 if graceful else 0.0
        stops = [
            lambda: TwilioMock(self.run_dir, "node", account_sid="", auth_token="").stop(timeout=10 * grace),
            lambda: Kafka(self.run_dir, "java").stop(timeout=30 * grace),
        ]
        if pg_bin is not None:
            postgres = Postgres(self.run_dir, pg_bin, fsync=True)
            stops.append(lambda: postgres.stop(mode="fast" if graceful else "immediate"))
        for stop in stops:
            try:
                stop()
            except Exception as exc:  # keep stopping the others
                errors.append(exc)
        if errors:
            raise errors[0]

    def remove(self) -> None:
        """Kill the stack and delete its run directory (and a PostgreSQL temp data dir, if any)."""
        self.stop(graceful=False)
        pg_bin = find_pg_bin()
        if pg_bin is not None:
            Postgres(self.run_dir, pg_bin, fsync=True).remove_files()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self._state = {}

    def status(self) -> dict[str, Any]:
        """What ``stack.json`` records plus whether each component's process is alive now."""
        state = self._read()
        if not state:
            return {"run_dir": str(self.run_dir), "running": False}
        kafka, twilio, pg = state.get("kafka") or {}, state.get("twilio") or {}, state.get("postgres") or {}
        alive = {
            "kafka": pid_alive(kafka.get("pid"), str(self.run_dir / "kafka")),
            "prism": pid_alive(twilio.get("prism_pid"), str(self.run_dir / "twilio-mock")),
            "twilio_proxy": pid_alive(twilio.get("proxy_pid"), str(self.run_dir / "twilio-mock")),
            "postgres": bool(pg) and (Path(pg["data_dir"]) / "postmaster.pid").exists(),
        }
        summary = {k: v for k, v in state.items() if k not in ("kafka", "postgres", "twilio")}
        summary["alive"] = alive
        summary["running"] = bool(state.get("running")) and all(alive.values())
        return summary

    # -- what clients need --------------------------------------------------------------------
    def _get(self, key: str) -> str:
        value = self._state.get(key)
        if not value or not self._state.get("running"):
            raise ComponentError("devstack", f"stack in {self.run_dir} is not running (no {key})")
        return str(value)

    @property
    def kafka_bootstrap(self) -> str:
        """``127.0.0.1:<port>`` of the broker."""
        return self._get("kafka_bootstrap")

    @property
    def postgres_url(self) -> str:
        """``postgresql+asyncpg://manual_actions@127.0.0.1:<port>`` (append ``/<database>``)."""
        return self._get("postgres_url")

    @property
    def twilio_base_url(self) -> str:
        """``http://127.0.0.1:<port>``: give it to the Twilio SDK as the API base URL."""
        return self._get("twilio_base_url")

    @property
    def twilio_account_sid(self) -> str:
        return self._get("twilio_account_sid")

    @property
    def twilio_auth_token(self) -> str:
        """Random per stack; the mock checks requests and signs callbacks with it."""
        return self._get("twilio_auth_token")

    @property
    def logs(self) -> dict[str, str]:
        """Log file of each component."""
        return dict(self._state.get("logs", {}))

    def database_url(self, name: str) -> str:
        """Create database ``name`` if missing; return ``postgresql+asyncpg://...:<port>/<name>``."""
        pg = self._state.get("postgres")
        if not pg or not self._state.get("running"):
            raise ComponentError("devstack", f"stack in {self.run_dir} is not running (no postgres)")
        state = PostgresState(**pg)
        return Postgres(self.run_dir, Path(state.bin_dir), fsync=state.fsync).database_url(state, name)

    def env(self) -> dict[str, str]:
        """Environment variables a service needs to use this stack (all but its own DATABASE_URL)."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            "TWILIO_API_BASE_URL": self.twilio_base_url,
            "TWILIO_ACCOUNT_SID": self.twilio_account_sid,
            "TWILIO_AUTH_TOKEN": self.twilio_auth_token,
        }

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def session_run_dir(pid: int | None = None) -> Path:
    """``<repo>/.run/test-<pid>``: one run directory per test session."""
    return run_root() / f"test-{pid if pid is not None else os.getpid()}"


def reap_stale_test_runs() -> list[Path]:
    """Stop and delete the run directories of test sessions whose process is gone.

    A test session killed before its teardown leaves its components running; the next session
    cleans them up. Returns the directories removed.
    """
    removed: list[Path] = []
    root = run_root()
    if not root.is_dir():
        return removed
    for child in root.iterdir():
        match = _TEST_RUN.match(child.name)
        if not match or not child.is_dir() or pid_alive(int(match.group(1))):
            continue
        with contextlib.suppress(Exception):
            Stack(child).remove()
        shutil.rmtree(child, ignore_errors=True)
        removed.append(child)
    return removed
