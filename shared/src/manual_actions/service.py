"""Running a service process: HTTP server plus background loops, with clean shutdown."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from fastapi import FastAPI

from manual_actions.settings import ServiceSettings

BackgroundLoop = Callable[[], Awaitable[None]]


async def serve(
    app: FastAPI,
    settings: ServiceSettings,
    *,
    background: Sequence[BackgroundLoop] = (),
    on_shutdown: Sequence[Callable[[], Awaitable[None]]] = (),
) -> None:
    """Run uvicorn for ``app`` on settings.http_host:http_port and every background loop in the
    same event loop until SIGTERM/SIGINT; a loop that crashes stops the process (non-zero exit)
    rather than leaving a half-working service. ``on_shutdown`` callables run last."""
    raise NotImplementedError
