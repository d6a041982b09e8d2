"""HTTP plumbing every service's API uses: app factory, health/readiness, metrics, problem+json."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from fastapi import FastAPI

ReadinessCheck = Callable[[], Awaitable[None]]


def create_app(
    service_name: str,
    *,
    readiness_checks: Sequence[tuple[str, ReadinessCheck]] = (),
    version: str = "0.1.0",
) -> FastAPI:
    """A FastAPI app with ``GET /health`` (process alive), ``GET /ready`` (each readiness check
    passes, else 503 naming the failing ones), ``GET /metrics`` (Prometheus text format) and
    handlers that render every error as RFC 9457 problem+json; validation errors list each
    invalid field as ``{"field": "body.phone", "message": ...}`` under ``errors``."""
    raise NotImplementedError


def problem(status: int, title: str, detail: str | None = None, **extra: object) -> Exception:
    """An exception that renders as problem+json with ``status``, ``title``, ``detail`` and extras."""
    raise NotImplementedError
