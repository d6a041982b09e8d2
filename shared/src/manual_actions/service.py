"""Running a service process: HTTP server plus background loops, with clean shutdown.

A service's ``main.py`` ends with ``run_service(serve(app, settings, background=[...],
on_shutdown=[...]))`` (on uvloop, see docs/decisions/0022). Shutdown order: stop accepting HTTP
requests and finish in-flight ones, cancel the background loops and wait for them, then run
``on_shutdown`` callables in order (close producers, dispose engines). The exit status tells the
supervisor what happened: 0 after SIGTERM/SIGINT, 1 when a background loop failed
(``SystemExit(1)``), uvicorn's own non-zero status when the server could not start (port taken,
lifespan failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from typing import Any

import uvicorn
import uvloop
from fastapi import FastAPI

from manual_actions.metrics import BACKGROUND_LOOP_CRASHES
from manual_actions.settings import ServiceSettings

BackgroundLoop = Callable[[], Awaitable[None]]

logger = logging.getLogger("manual_actions.service")

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def run_service(main: Coroutine[Any, Any, None]) -> None:
    """Run a service process's ``main`` coroutine to the end on uvloop, as ``asyncio.run`` would on
    asyncio's own loop, with the garbage collector tuned (``tune_garbage_collector``; the
    service's modules are imported by now). With uvloop (and httptools, which uvicorn then picks
    for HTTP) a Let's Start cost about a third less CPU in ``./dev bench -k million``
    (docs/decisions/0022)."""
    tune_garbage_collector()
    uvloop.run(main)


def tune_garbage_collector() -> None:
    """Make the cyclic garbage collector cheap for batch work; call once the process has imported
    its modules (``run_service`` does).

    With CPython's default first threshold (700 allocations) a consumer batch's 500 decoded
    envelopes, alive while the batch waits for PostgreSQL, were promoted to the oldest generation
    and kept triggering full collections over every object of the process (about 150,000 after
    start-up): decoding one ActionQueued took about 40 µs instead of 20 µs (docs/decisions/0021).
    ``gc.freeze`` moves the objects of start-up out of the collector's sight for good; a first
    threshold of 50,000 lets a batch die by reference counting before a collection looks at it
    (a batch of 500 ActionQueued holds about 10,000 tracked objects at its peak, so 10,000 still
    meant a young collection for almost every batch: 88.6 against 73.3 µs of consumer CPU per
    action, docs/benchmarks.md). Cycles are still collected."""
    gc.freeze()
    gc.set_threshold(50_000, 10, 10)


class _Server(uvicorn.Server):
    """uvicorn's server minus its own signal handling.

    ``serve`` owns SIGTERM/SIGINT for the whole process (HTTP and loops alike). uvicorn's handler
    would also re-raise the captured signal after shutdown, killing the process by signal before
    ``on_shutdown`` has run and hiding the exit status.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _loop_name(loop: BackgroundLoop) -> str:
    target = loop.func if isinstance(loop, functools.partial) else loop
    return str(getattr(target, "__qualname__", None) or repr(target))


async def supervise(
    loop_fn: BackgroundLoop,
    *,
    stopping: Callable[[], bool],
    on_failure: Callable[[str, Exception | None], None],
) -> None:
    """Run one background loop, which is expected to run until cancelled. If it raises, or
    returns, while ``stopping()`` is false, this is logged (a crash also counts in
    ``manual_actions_background_loop_crashes``) and ``on_failure`` gets the loop's name and its
    exception (None when it returned); the caller then stops the process."""
    name = _loop_name(loop_fn)
    try:
        await loop_fn()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if stopping():
            logger.exception("Background loop %s failed while stopping", name, extra={"loop": name})
            return
        logger.exception("Background loop %s crashed; stopping the service", name, extra={"loop": name})
        BACKGROUND_LOOP_CRASHES.labels(loop=name).inc()
        on_failure(name, exc)
    else:
        if stopping():
            return
        logger.error(
            "Background loop %s returned while the service was running; stopping the service",
            name,
            extra={"loop": name},
        )
        on_failure(name, None)


async def serve(
    app: FastAPI,
    settings: ServiceSettings,
    *,
    background: Sequence[BackgroundLoop] = (),
    on_shutdown: Sequence[Callable[[], Awaitable[None]]] = (),
    shutdown_timeout: float = 10.0,
    install_signal_handlers: bool = True,
) -> None:
    """Run uvicorn for ``app`` on settings.http_host:http_port and every background loop in the
    same event loop until SIGTERM/SIGINT; a loop that crashes stops the process (non-zero exit)
    rather than leaving a half-working service. ``on_shutdown`` callables run last.

    A background loop is expected to run until cancelled: one that raises, or that returns while
    the service is running, is logged and makes ``serve`` stop everything and raise
    ``SystemExit(1)`` after the cleanup. Loops and each ``on_shutdown`` callable get
    ``shutdown_timeout`` seconds to finish; an ``on_shutdown`` failure is logged and the rest
    still run. A second SIGINT during shutdown skips waiting for open HTTP connections.
    """
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,  # keep the JSON logging configured by configure_logging
        access_log=False,  # manual_actions.http logs each request with route and duration
        timeout_graceful_shutdown=int(shutdown_timeout),
        server_header=False,
    )
    server = _Server(config)
    failed: list[str] = []

    def request_stop() -> None:
        server.should_exit = True

    def on_signal(sig: signal.Signals) -> None:
        if server.should_exit:
            logger.warning("Received %s again; not waiting for open connections", sig.name)
            server.force_exit = True
        else:
            logger.info("Received %s; stopping", sig.name)
        request_stop()

    def loop_failed(name: str, _: Exception | None) -> None:
        failed.append(name)
        request_stop()

    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if install_signal_handlers:
        for sig in _STOP_SIGNALS:
            try:
                loop.add_signal_handler(sig, on_signal, sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / platform
                logger.warning("Cannot install a handler for %s; stop the service another way", sig.name)
            else:
                installed.append(sig)

    tasks = [
        asyncio.create_task(
            supervise(fn, stopping=lambda: server.should_exit, on_failure=loop_failed), name=_loop_name(fn)
        )
        for fn in background
    ]
    try:
        await server.serve()
    finally:
        request_stop()
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=shutdown_timeout)
            for task in pending:
                logger.error(
                    "Background loop %s did not stop within %.0f s", task.get_name(), shutdown_timeout
                )
        for callback in on_shutdown:
            try:
                await asyncio.wait_for(callback(), timeout=shutdown_timeout)
            except Exception:
                logger.exception("Shutdown step %s failed", _loop_name(callback))
        for sig in installed:
            loop.remove_signal_handler(sig)
    if failed:
        logger.error("Stopped because background loop(s) failed: %s", ", ".join(failed))
        raise SystemExit(1)
    logger.info("Stopped")
