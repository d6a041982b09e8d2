"""HTTP plumbing every service's API uses: app factory, health/readiness, metrics, problem+json.

Every error leaves an API built with ``create_app`` as an RFC 9457 problem document
(``Content-Type: application/problem+json``) with ``type``, ``title``, ``status``, ``detail`` and
``instance`` (the request path), plus extension members:

* request validation fails: status **422**, ``errors: [{"field": "body.phone", "message": ...}]``
  (one entry per invalid field, ``field`` is the location joined by dots) and a ``detail`` that
  names the first invalid field;
* a route raises ``problem(...)``: its status, title, detail and extras;
* a route (or the router: 404, 405) raises ``HTTPException``: its status, the standard reason
  phrase as title, its detail, and its headers;
* anything else escapes a route: status 500 with a generic detail and the ``request_id``; the
  exception and its traceback go to the log only.

Every response carries ``X-Request-ID`` (the caller's, if it sent a sane one, else a new one), and
every log line written while handling the request carries it as ``request_id``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from manual_actions.logging import bind_log_context, reset_log_context
from manual_actions.metrics import (
    HTTP_REQUEST_DURATION,
    HTTP_REQUESTS,
    READINESS_CHECK_FAILURES,
    set_service_info,
)

ReadinessCheck = Callable[[], Awaitable[None]]

PROBLEM_JSON = "application/problem+json"
REQUEST_ID_HEADER = "X-Request-ID"

# Operational endpoints are polled every few seconds; their access lines are DEBUG, not INFO.
_QUIET_ROUTES = frozenset({"/health", "/ready", "/metrics"})
# A caller-supplied request id is echoed into logs and headers, so only short, plain ones are kept.
_REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")

logger = logging.getLogger("manual_actions.http")
access_logger = logging.getLogger("manual_actions.http.access")


class ProblemError(StarletteHTTPException):
    """An error a route raises on purpose; rendered as problem+json (see ``problem``)."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        extra: Mapping[str, object] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status, detail=detail, headers=headers)
        self.title = title
        self.problem_detail = detail
        self.extra: dict[str, object] = dict(extra or {})


def problem(
    status: int,
    title: str,
    detail: str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: object,
) -> Exception:
    """An exception that renders as problem+json with ``status``, ``title``, ``detail`` and extras.

    Extras become top-level members (``field="phone"``, ``required_roles=[...]``); pass
    ``type="https://..."`` to name a problem type other than ``about:blank``. ``headers`` are added
    to the response (e.g. ``WWW-Authenticate``). Usage: ``raise problem(404, "Action not found",
    f"No action {action_id} in this tenant")``.
    """
    return ProblemError(status, title, detail, extra=extra, headers=headers)


def problem_response(
    status: int,
    title: str,
    detail: str | None = None,
    *,
    instance: str | None = None,
    extra: Mapping[str, object] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The problem+json response for the given members (used by the handlers below)."""
    body: dict[str, object] = {"type": "about:blank", "title": title, "status": status}
    if detail is not None:
        body["detail"] = detail
    if instance is not None:
        body["instance"] = instance
    for key, value in (extra or {}).items():
        if key not in ("status", "title", "detail"):
            body[key] = value
    return JSONResponse(
        jsonable_encoder(body), status_code=status, media_type=PROBLEM_JSON, headers=dict(headers or {})
    )


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc, ProblemError):
        return problem_response(
            exc.status_code,
            exc.title,
            exc.problem_detail,
            instance=request.url.path,
            extra=exc.extra,
            headers=exc.headers,
        )
    extra: dict[str, object] = {}
    detail: str | None
    if isinstance(exc.detail, str) or exc.detail is None:
        detail = exc.detail
    elif isinstance(exc.detail, Mapping):
        # HTTPException(detail={...}) from code written for plain FastAPI: keep its members.
        extra = {str(k): v for k, v in exc.detail.items()}
        detail = str(extra.pop("detail")) if "detail" in extra else None
    else:
        detail = None
        extra = {"errors": exc.detail}
    return problem_response(
        exc.status_code,
        _reason(exc.status_code),
        detail,
        instance=request.url.path,
        extra=extra,
        headers=exc.headers,
    )


def _field_name(loc: Sequence[object]) -> str:
    return ".".join(str(part) for part in loc) or "request"


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"field": _field_name(error.get("loc", ())), "message": str(error.get("msg", "invalid value"))}
        for error in exc.errors()
    ]
    if errors:
        first = errors[0]
        detail = f"Invalid {first['field']}: {first['message']}"
        if len(errors) > 1:
            detail += f" (and {len(errors) - 1} more invalid field{'s' if len(errors) > 2 else ''})"
    else:
        detail = "The request is invalid."
    return problem_response(
        422, "Request validation failed", detail, instance=request.url.path, extra={"errors": errors}
    )


def _route_template(scope: Scope) -> str:
    """The matched route's path template; ``unmatched`` for 404s so random paths add no series."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not isinstance(template, str):
        return "unmatched"
    return scope.get("root_path", "") + template


# The request metrics' series by (method, route template, status): ``labels()`` per request was a
# measurable part of a fast request's CPU. Bounded: route templates, not paths (404s share one).
_SERIES: dict[tuple[str, str, int], tuple[Any, Any]] = {}


class _ObservedRequests:
    """Outermost of our middleware: request id, metrics, access log, and the 500 safety net.

    Written as plain ASGI (not ``BaseHTTPMiddleware``) so that the route Starlette matched is
    visible in ``scope`` afterwards and the log context set here reaches the route's task.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = supplied if _REQUEST_ID_PATTERN.fullmatch(supplied) else uuid.uuid4().hex
        token = bind_log_context(request_id=request_id)
        status = 500
        response_started = False

        async def send_with_request_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, request_id)
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_request_id)
        except Exception:
            logger.exception("Unhandled error while handling %s %s", scope["method"], scope["path"])
            if response_started:
                raise  # too late for a problem document; the server closes the connection
            response = problem_response(
                500,
                "Internal Server Error",
                "An unexpected error occurred. Quote the request id when reporting it.",
                instance=scope["path"],
                extra={"request_id": request_id},
            )
            await response(scope, receive, send_with_request_id)
        finally:
            elapsed = time.perf_counter() - started
            route = _route_template(scope)
            key = (scope["method"], route, status)
            series = _SERIES.get(key)
            if series is None:
                labels = {"method": key[0], "route": route, "status": str(status)}
                series = _SERIES[key] = (HTTP_REQUESTS.labels(**labels),
                                         HTTP_REQUEST_DURATION.labels(**labels))
            series[0].inc()
            series[1].observe(elapsed)
            access_logger.log(
                logging.DEBUG if route in _QUIET_ROUTES else logging.INFO,
                "%s %s %s",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "method": scope["method"],
                    "route": route,
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )
            reset_log_context(token)


def add_readiness_check(app: FastAPI, name: str, check: ReadinessCheck) -> None:
    """Register a check for ``GET /ready`` after the app was created (e.g. once an engine exists).

    A check is an async callable that returns when the dependency is usable and raises otherwise.
    """
    app.state.readiness_checks.append((name, check))


def create_app(
    service_name: str,
    *,
    readiness_checks: Sequence[tuple[str, ReadinessCheck]] = (),
    version: str = "0.1.0",
    readiness_timeout: float = 2.0,
    **fastapi_options: Any,
) -> FastAPI:
    """A FastAPI app with ``GET /health`` (process alive), ``GET /ready`` (each readiness check
    passes, else 503 naming the failing ones), ``GET /metrics`` (Prometheus text format) and
    handlers that render every error as RFC 9457 problem+json; validation errors list each
    invalid field as ``{"field": "body.phone", "message": ...}`` under ``errors``.

    Readiness checks run concurrently, each bounded by ``readiness_timeout`` seconds (a hung
    check counts as failed). ``fastapi_options`` go to ``FastAPI(...)`` (``lifespan``,
    ``description``...). The app's ``state.service_name`` is set; ``state.readiness_checks`` is
    the list ``add_readiness_check`` appends to.
    """
    fastapi_options.setdefault("title", service_name)
    app = FastAPI(version=version, **fastapi_options)
    app.state.service_name = service_name
    app.state.readiness_checks = list(readiness_checks)
    set_service_info(service_name, version)

    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_middleware(_ObservedRequests)

    @app.get("/health", tags=["operations"], summary="The process is alive")
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": service_name}

    @app.get(
        "/ready",
        tags=["operations"],
        summary="Every dependency this process needs is reachable",
        responses={503: {"description": "At least one readiness check failed (problem+json)."}},
    )
    async def ready(request: Request) -> Response:
        checks: list[tuple[str, ReadinessCheck]] = list(request.app.state.readiness_checks)

        async def run(name: str, check: ReadinessCheck) -> str | None:
            try:
                await asyncio.wait_for(check(), timeout=readiness_timeout)
            except Exception as exc:
                # Details stay in the log: the response is public and a driver's message can
                # name hosts and users.
                logger.warning("Readiness check %s failed", name, exc_info=exc, extra={"check": name})
                READINESS_CHECK_FAILURES.labels(check=name).inc()
                return "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
            return None

        results = await asyncio.gather(*(run(name, check) for name, check in checks))
        outcome = {name: error or "ok" for (name, _), error in zip(checks, results, strict=True)}
        failing = [name for (name, _), error in zip(checks, results, strict=True) if error]
        if failing:
            return problem_response(
                503,
                "Not ready",
                f"Failing readiness checks: {', '.join(failing)}",
                instance=request.url.path,
                extra={"failing": failing, "checks": outcome},
            )
        return JSONResponse({"status": "ready", "checks": outcome})

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics (text format)")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
