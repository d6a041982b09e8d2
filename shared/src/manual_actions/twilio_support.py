"""What the Twilio-facing services (sms-sender, dialer) share. No business rules live here.

* ``TwilioSettings``: the environment variables of a Twilio-facing service.
* ``make_client``: the official SDK client, pointed at ``TWILIO_API_BASE_URL`` when it is set.
* ``twilio_request_verifier``: a FastAPI dependency that accepts a webhook only when its
  ``X-Twilio-Signature`` is valid for the URL as Twilio requested it; else 403 problem+json.
* ``command_intake``: the consumer handler that stores each command as a row, once.
* ``Dispatcher``: the worker loop that makes the one Twilio "create" request per stored row.
* ``stage_result``: stages a result event for a row with the next per-command sequence number.
* ``build_twilio_service`` / ``twilio_main``: the one wiring of a Twilio-facing service from its
  ``TwilioServiceSpec`` (migrations, commands topic, table, target, intake, routes, own loops).

The durable-intent rule (docs/decisions/0009): a row is marked ``sending`` and committed before its
Twilio request starts, and a row found ``sending`` by anyone but the worker that claimed it is
never sent again: it becomes ``unknown``. Whether the claiming worker is still alive is told by a
PostgreSQL session advisory lock it holds on the row's key for as long as the request runs; the
lock vanishes with the worker's connection, so a crashed process is detected without timers.

The SDK is blocking (``requests``); ``Dispatcher`` runs each request with ``asyncio.to_thread``.
Why not the SDK's aiohttp client: the synchronous client is the SDK's default and most used
path, it encodes list parameters (``StatusCallbackEvent``) as the repeated form keys Twilio's
contract declares, and a thread cannot be cancelled half-way through a request by a shutdown,
so every request that was started is also recorded (see ``Dispatcher``). One thread per
concurrent request is cheap at the concurrency a dispatcher uses (a handful).

Tables handled by ``command_intake``, ``Dispatcher`` and ``stage_result`` must have the columns
of ``outgoing_schema()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import parse_qsl

import requests
from fastapi import APIRouter, FastAPI, Request
from prometheus_client import Counter, Histogram
from pydantic import Field, SecretStr
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Table,
    Text,
    Uuid,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.schema import SchemaItem
from starlette.datastructures import ImmutableMultiDict
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

from manual_actions.auth import IDENTITY_POOL_SIZE, IdentityStore
from manual_actions.contracts import Envelope, Payload
from manual_actions.db import create_engine
from manual_actions.faults import crash_point
from manual_actions.http import create_app, problem
from manual_actions.kafka import (
    BatchConsumer,
    BatchHandler,
    Delivered,
    PermanentError,
)
from manual_actions.logging import configure_logging
from manual_actions.outbox import add_to_outbox, create_outbox_tables, drop_outbox_tables
from manual_actions.runtime import start_core
from manual_actions.service import BackgroundLoop, run_service, serve
from manual_actions.settings import ServiceSettings
from manual_actions.twilio_http import RewritingTwilioHttpClient
from manual_actions.waiting import wait_event

logger = logging.getLogger("manual_actions.twilio")
# The SDK logs eight INFO lines per request (URL, headers...); the dispatcher logs one line per
# outcome instead, so the SDK's own lines are kept for warnings and errors.
_SDK_LOGGER = logging.getLogger("manual_actions.twilio.sdk")
_SDK_LOGGER.setLevel(logging.WARNING)

SIGNATURE_HEADER = "X-Twilio-Signature"

CRASH_AFTER_TWILIO_ANSWER = "dispatcher.after-twilio-answer"
"""Crash point (``manual_actions.faults``): Twilio answered the create request; nothing recorded yet."""

T = TypeVar("T")
OutgoingRow = Mapping[str, Any]
"""A row of an outgoing-request table, by column name."""

# --- metrics (each declared once; one process runs one service, so no service label) ------------

# Seconds each Twilio API request took, by SDK operation (messages.create, calls.create) and how
# it ended (accepted, rejected, retry, unknown). The tail is what a dispatcher worker waits for.
TWILIO_REQUEST_SECONDS = Histogram(
    "manual_actions_twilio_request_seconds",
    "Time of one Twilio API request, by operation and outcome.",
    ["operation", "outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)

# Rows found 'sending' with no live worker (a process died during its Twilio request), by how they
# were settled: 'unknown' (no sid known: reported as not resent) or 'accepted' (a callback had
# already given the sid). Any increase of 'unknown' means a person must check the outcome.
TWILIO_ABANDONED_REQUESTS = Counter(
    "manual_actions_twilio_abandoned_requests",
    "Rows left 'sending' by a dead worker, by how they were settled.",
    ["settled_as"],
)

# Webhook requests refused because their X-Twilio-Signature did not match, by route. A steady rate
# means a wrong PUBLIC_BASE_URL or auth token (or someone probing the endpoint).
TWILIO_SIGNATURE_REJECTIONS = Counter(
    "manual_actions_twilio_signature_rejections",
    "Twilio webhooks refused for an invalid signature, by route.",
    ["route"],
)


# --- settings and client --------------------------------------------------------------------------


class TwilioSettings(ServiceSettings):
    """``ServiceSettings`` plus what a Twilio-facing service needs; its settings subclass this.

    ``TWILIO_API_BASE_URL`` empty means the real Twilio. ``PUBLIC_BASE_URL`` is where Twilio reaches
    this service's webhooks (scheme, host, port and any path prefix a proxy adds); empty means
    ``http://HTTP_HOST:HTTP_PORT``, right when Twilio (or the mock) runs on the same machine.
    """

    twilio_account_sid: str = Field(default="", description="Account SID (AC...).")
    twilio_auth_token: SecretStr = Field(
        default=SecretStr(""), description="Auth token: authenticates requests and signs webhooks."
    )
    twilio_api_base_url: str = Field(default="", description="Twilio API origin; empty = the real Twilio.")
    twilio_from_number: str = Field(default="", description="Our number (E.164) texts and calls come from.")
    public_base_url: str = Field(default="", description="Where Twilio reaches our webhooks.")
    twilio_request_timeout_seconds: float = Field(default=10.0, gt=0)

    consumer_group_id: str = Field(
        default="", description="Consumer group of the commands consumer (each service sets its default)."
    )

    dispatch_concurrency: int = Field(default=4, ge=1, description="Twilio requests in flight at most.")
    dispatch_poll_interval_ms: int = Field(default=500, ge=10)
    dispatch_max_attempts: int = Field(
        default=5, ge=1, description="Tries for a request that surely did not reach Twilio."
    )
    dispatch_retry_base_seconds: float = Field(default=1.0, gt=0)
    dispatch_recovery_interval_seconds: float = Field(default=30.0, gt=0)

    def missing_twilio_settings(self) -> list[str]:
        """Names of the required Twilio variables that are empty (none when complete)."""
        required = {
            "TWILIO_ACCOUNT_SID": self.twilio_account_sid,
            "TWILIO_AUTH_TOKEN": self.twilio_auth_token.get_secret_value(),
            "TWILIO_FROM_NUMBER": self.twilio_from_number,
        }
        return [name for name, value in required.items() if not value]

    def public_url(self, path: str, **query: str) -> str:
        """The absolute URL Twilio must call for ``path`` (``/twilio/...``) with ``query``."""
        base = (self.public_base_url or f"http://{self.http_host}:{self.http_port}").rstrip("/")
        url = base + path
        if query:
            url += "?" + "&".join(f"{key}={value}" for key, value in query.items())
        return url


def make_client(settings: TwilioSettings) -> Client:
    """The Twilio SDK client for ``settings`` (blocking: call it through ``asyncio.to_thread``).

    Every request has ``TWILIO_REQUEST_TIMEOUT_SECONDS`` as timeout (the SDK's default client has
    none) and goes to ``TWILIO_API_BASE_URL`` when it is set (``manual_actions.twilio_http``).
    Raises ValueError naming the missing variables when the account is not configured.
    """
    missing = settings.missing_twilio_settings()
    if missing:
        raise ValueError(f"Twilio is not configured: set {', '.join(missing)}")
    timeout = settings.twilio_request_timeout_seconds
    base_url = settings.twilio_api_base_url
    http_client = (
        RewritingTwilioHttpClient(base_url, timeout=timeout, logger=_SDK_LOGGER)
        if base_url
        else TwilioHttpClient(timeout=timeout, logger=_SDK_LOGGER)
    )
    return Client(
        settings.twilio_account_sid,
        settings.twilio_auth_token.get_secret_value(),
        http_client=http_client,
    )


# --- webhook signatures ---------------------------------------------------------------------------

TwilioParams = ImmutableMultiDict[str, str]


def url_as_twilio_saw_it(settings: TwilioSettings, request: Request) -> str:
    """``PUBLIC_BASE_URL`` + the request's path + its raw query string: what Twilio signed."""
    query = request.url.query
    return settings.public_url(request.url.path) + (f"?{query}" if query else "")


def twilio_request_verifier(settings: TwilioSettings) -> Callable[[Request], Awaitable[TwilioParams]]:
    """A FastAPI dependency returning the webhook's form parameters once its signature is valid.

    The signature is checked with ``twilio.request_validator.RequestValidator`` (the auth token,
    ``url_as_twilio_saw_it`` and every form parameter, blank ones included). A missing or wrong
    ``X-Twilio-Signature`` raises 403 problem+json naming the header; nothing else happens.
    """
    validator = RequestValidator(settings.twilio_auth_token.get_secret_value())

    async def verified_twilio_params(request: Request) -> TwilioParams:
        body = await request.body()
        try:
            params: TwilioParams = ImmutableMultiDict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        except UnicodeDecodeError:
            params = ImmutableMultiDict()
            signature_ok = False
        else:
            signature = request.headers.get(SIGNATURE_HEADER, "")
            signature_ok = bool(signature) and validator.validate(
                url_as_twilio_saw_it(settings, request), params, signature
            )
        if not signature_ok:
            TWILIO_SIGNATURE_REJECTIONS.labels(request.url.path).inc()
            logger.warning(
                "twilio webhook refused: invalid signature",
                extra={"path": request.url.path, "signed_url": url_as_twilio_saw_it(settings, request)},
            )
            raise problem(
                403,
                "Invalid Twilio signature",
                f"The {SIGNATURE_HEADER} header is missing or does not match this request; "
                "only Twilio can call this endpoint.",
                field=f"header.{SIGNATURE_HEADER}",
            )
        return params

    return verified_twilio_params


def required_param(params: TwilioParams, name: str) -> str:
    """The webhook parameter ``name``; 422 problem+json naming it when it is missing or blank."""
    value = params.get(name)
    if not value:
        raise problem(
            422, f"{name} is missing", f"This Twilio webhook must carry {name}.", field=f"form.{name}"
        )
    return value


def unknown_command(command_id: uuid.UUID, resource: str) -> Exception:
    """The 404 problem for a webhook about a command this service never stored."""
    return problem(
        404,
        f"Unknown {resource}",
        f"No {resource} exists for command {command_id}.",
        field="query.command_id",
    )


# --- the outgoing table ---------------------------------------------------------------------------


class DispatchStatus(StrEnum):
    """Where a row stands with respect to its one Twilio create request."""

    PENDING = "pending"  # stored; not requested yet (or a retry is due after a surely-unsent try)
    SENDING = "sending"  # committed before the request; stays so while the request runs
    ACCEPTED = "accepted"  # Twilio answered 2xx: we have the sid
    FAILED = "failed"  # Twilio refused it, or could not be reached: nothing was sent
    UNKNOWN = "unknown"  # the request may have reached Twilio; never sent again (ADR 0009)


def outgoing_schema(table_name: str) -> list[SchemaItem]:
    """The columns and indexes every outgoing-request table has (a service adds its own columns).

    Fresh objects on every call (a Column belongs to one Table). Used both by a service's table
    definition and by its first migration (``op.create_table(name, *outgoing_schema(name), ...)``),
    so this helper is frozen: a later change comes as a new migration of each service, never as
    an edit here.
    """
    return [
        Column("command_id", Uuid, primary_key=True, comment="The command's id: one row per command."),
        Column("tenant_id", Text, nullable=False),
        Column("action_id", Uuid, nullable=False),
        Column("command_message_id", Uuid, nullable=False, comment="Envelope id of the command."),
        Column("status", Text, nullable=False, server_default=DispatchStatus.PENDING.value),
        Column("twilio_sid", Text, nullable=True),
        Column("twilio_status", Text, nullable=True, comment="Last status Twilio reported in a callback."),
        Column("attempts", Integer, nullable=False, server_default="0"),
        Column("next_attempt_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("claimed_at", DateTime(timezone=True), nullable=True),
        Column("last_error", Text, nullable=True),
        Column("results_published", Integer, nullable=False, server_default="0"),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Index(
            f"ix_{table_name}_due",
            "next_attempt_at",
            "created_at",
            postgresql_where=text("status = 'pending'"),
        ),
        Index(f"ix_{table_name}_sending", "claimed_at", postgresql_where=text("status = 'sending'")),
        Index(f"ix_{table_name}_tenant_action", "tenant_id", "action_id"),
    ]


def callback_schema(outgoing_table_name: str) -> list[SchemaItem]:
    """Columns of the table that records every status callback of ``outgoing_table_name``'s rows.

    Frozen like ``outgoing_schema`` (a service's first migration uses it).
    """
    return [
        Column("id", BigInteger, primary_key=True, autoincrement=True),
        Column("tenant_id", Text, nullable=False),
        Column(
            "command_id", Uuid, ForeignKey(f"{outgoing_table_name}.command_id"), nullable=False, index=True
        ),
        Column("twilio_sid", Text, nullable=True),
        Column("twilio_status", Text, nullable=False),
        Column("params", JSONB, nullable=False, comment="The callback's form parameters, as received."),
        Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    ]


def create_twilio_tables(outgoing: str, callbacks: str, own_columns: Sequence[SchemaItem]) -> None:
    """From inside a service's first migration: the outbox and inbox, the outgoing-request table
    ``outgoing`` (common columns plus the service's frozen ``own_columns``) and ``callbacks``."""
    from alembic import op  # only meaningful while Alembic runs a migration

    create_outbox_tables()
    op.create_table(outgoing, *outgoing_schema(outgoing), *own_columns)
    op.create_table(callbacks, *callback_schema(outgoing))


def drop_twilio_tables(outgoing: str, callbacks: str) -> None:
    """The reverse of ``create_twilio_tables``, for the migration's ``downgrade()``."""
    from alembic import op

    op.drop_table(callbacks)
    op.drop_table(outgoing)
    drop_outbox_tables()


async def lock_row(conn: AsyncConnection, table: Table, command_id: uuid.UUID) -> OutgoingRow | None:
    """The row of ``command_id``, locked FOR UPDATE in the caller's transaction (None if absent)."""
    found = (
        (await conn.execute(select(table).where(table.c.command_id == command_id).with_for_update()))
        .mappings()
        .one_or_none()
    )
    return dict(found) if found is not None else None


async def record_callback(
    conn: AsyncConnection,
    table: Table,
    callbacks: Table,
    command_id: uuid.UUID,
    *,
    sid: str | None,
    status: str,
    params: Mapping[str, str],
) -> OutgoingRow | None:
    """Record one verified status callback in the caller's transaction; None for an unknown command.

    Locks the row (callbacks of one command are settled one at a time), inserts the callback,
    stores ``status`` as the row's ``twilio_status`` and keeps the first sid known. A row settled
    ``unknown`` becomes ``accepted``: the callback proves Twilio has the request. Returns the row as
    it was before this callback (its ``result`` tells the caller what was already published),
    with ``twilio_sid`` filled in.
    """
    row = await lock_row(conn, table, command_id)
    if row is None:
        return None
    await conn.execute(
        insert(callbacks).values(
            tenant_id=row["tenant_id"],
            command_id=command_id,
            twilio_sid=sid,
            twilio_status=status,
            params=dict(params),
        )
    )
    known_sid = row["twilio_sid"] or sid
    values: dict[str, object] = {"twilio_status": status, "twilio_sid": known_sid, "updated_at": func.now()}
    if row["status"] == DispatchStatus.UNKNOWN.value and known_sid:
        values["status"] = DispatchStatus.ACCEPTED.value
        logger.warning(
            "a callback settled a request whose outcome was unknown",
            extra={"command_id": str(command_id), "tenant": row["tenant_id"], "sid": known_sid},
        )
    await conn.execute(update(table).where(table.c.command_id == command_id).values(**values))
    return {**row, "twilio_sid": known_sid}


C = TypeVar("C", bound=Payload)


def command_intake(
    engine: AsyncEngine,
    table: Table,
    command_type: type[C],
    values: Callable[[C], Mapping[str, object]],
    *,
    stored: Callable[[], None] | None = None,
) -> BatchHandler:
    """The consumer handler that inserts one row per command (``command_id`` is the key).

    ``values`` gives the service's own columns for a command. A redelivered command inserts
    nothing (ON CONFLICT DO NOTHING); the batch commits before the consumer commits the offsets.
    A message of another type raises PermanentError (the consumer dead-letters it). ``stored``
    is called after each commit (to wake the dispatcher of this process).
    """

    async def handle(batch: Sequence[Delivered]) -> None:
        rows: list[dict[str, object]] = []
        for delivered in batch:
            envelope = delivered.envelope
            data = envelope.data
            if not isinstance(data, command_type):
                raise PermanentError(
                    f"{delivered.topic} carries {command_type.message_type} commands, got {envelope.type}"
                )
            rows.append(
                {
                    "command_id": data.command_id,
                    "tenant_id": envelope.tenant,
                    "action_id": data.action_id,
                    "command_message_id": envelope.id,
                    **values(data),
                }
            )
        if not rows:
            return
        async with engine.begin() as conn:
            await conn.execute(pg_insert(table).on_conflict_do_nothing(index_elements=["command_id"]), rows)
        if stored is not None:
            stored()

    return handle


async def stage_result(
    conn: AsyncConnection, table: Table, command_id: uuid.UUID, payload: Payload, *, topic: str, source: str
) -> Envelope[Any]:
    """Stage ``payload`` in the outbox as the next result of the row ``command_id``.

    The envelope's subject is the row's action id, its tenant the row's tenant, its causation the
    command's envelope id, and its sequence the row's ``results_published`` + 1 (incremented here,
    in the caller's transaction, so two results of one command never share a number).
    """
    row = (
        await conn.execute(
            update(table)
            .where(table.c.command_id == command_id)
            .values(results_published=table.c.results_published + 1, updated_at=func.now())
            .returning(
                table.c.results_published, table.c.tenant_id, table.c.action_id, table.c.command_message_id
            )
        )
    ).one()
    envelope = Envelope.wrap(
        payload,
        source=source,
        tenant=row.tenant_id,
        subject=str(row.action_id),
        sequence=row.results_published,
        causation_id=row.command_message_id,
    )
    await add_to_outbox(conn, topic, envelope)
    return envelope


# --- the dispatcher -------------------------------------------------------------------------------


class FailureKind(StrEnum):
    REJECTED = "rejected"  # Twilio answered 4xx: it refused the request, nothing was created
    UNREACHABLE = "unreachable"  # every try failed before the request was sent: nothing was created
    UNKNOWN = "unknown"  # the request may have been processed; it is not sent again


@dataclass(frozen=True)
class DispatchFailure:
    """Why a row will never get a sid from its create request (``reason`` is technical)."""

    kind: FailureKind
    reason: str
    error_code: int | None = None
    twilio_message: str | None = None
    """Twilio's own words for a refusal (REJECTED only)."""


class RequestOutcome(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    RETRY = "retry"
    UNKNOWN = "unknown"


def classify_twilio_error(exc: BaseException) -> RequestOutcome:
    """Whether a failed create request surely created nothing (and which way).

    * 4xx from Twilio (except 429): REJECTED. Twilio refused it; nothing exists to duplicate.
    * 429 Too Many Requests, or a connection that was never established (refused, DNS failure,
      connect timeout): RETRY. No byte of the request reached Twilio.
    * everything else (5xx, read timeout, connection dropped mid-request, unparsable answer, any
      other error): UNKNOWN. Twilio may have acted on it, so it must not be sent again.
    """
    if isinstance(exc, TwilioRestException | TwilioServiceException):
        status = exc.status
        if status == 429:
            return RequestOutcome.RETRY
        if 400 <= status < 500:
            return RequestOutcome.REJECTED
        return RequestOutcome.UNKNOWN
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return RequestOutcome.RETRY
    if isinstance(exc, requests.exceptions.ConnectionError):
        # requests wraps urllib3's MaxRetryError, whose ``reason`` says what failed.
        cause: BaseException | None = exc
        seen = 0
        while cause is not None and seen < 10:
            if isinstance(cause, NewConnectionError | NameResolutionError | ConnectTimeoutError):
                return RequestOutcome.RETRY
            reason = getattr(cause, "reason", None)
            cause = (
                reason
                if isinstance(reason, BaseException)
                else (
                    cause.args[0]
                    if cause.args and isinstance(cause.args[0], BaseException)
                    else cause.__cause__
                )
            )
            seen += 1
    return RequestOutcome.UNKNOWN


def describe_twilio_error(exc: BaseException) -> tuple[str, int | None, str | None]:
    """A technical one-line description of ``exc`` (for logs), Twilio's error code and Twilio's
    own message, when Twilio answered."""
    if isinstance(exc, TwilioRestException):
        message = str(exc.msg).removeprefix("Unable to create record: ")
        return f"HTTP {exc.status} (Twilio error {exc.code}): {exc.msg}", exc.code, message
    if isinstance(exc, TwilioServiceException):
        message = exc.title + (f" ({exc.detail})" if exc.detail else "")
        return f"HTTP {exc.status} (Twilio error {exc.code}): {message}", exc.code, message
    return f"{type(exc).__name__}: {exc}", None, None


class DispatchTarget(Protocol):
    """What a service plugs into ``Dispatcher``: its one Twilio request and its result events."""

    operation: str
    """Name of the SDK operation, for metrics and logs (``messages.create``)."""

    def send(self, client: Client, row: OutgoingRow) -> str:
        """Make the create request for ``row`` and return the resource sid. Runs in a thread."""
        ...

    async def accepted(self, conn: AsyncConnection, row: OutgoingRow, sid: str) -> None:
        """Twilio accepted ``row`` (status and sid are already stored). In the dispatcher's transaction."""
        ...

    async def failed(self, conn: AsyncConnection, row: OutgoingRow, failure: DispatchFailure) -> None:
        """``row`` will never get a sid (status already stored): stage the failure result."""
        ...


def _lock_key(command_id: uuid.UUID) -> int:
    """The advisory-lock key of a row (64 bits of its uuid, as PostgreSQL's signed bigint)."""
    return int.from_bytes(command_id.bytes[:8], "big", signed=True)


class Dispatcher:
    """Makes the one Twilio create request of each stored row; see ADR 0009.

    ``dispatch_concurrency`` workers each loop: claim the oldest due ``pending`` row (FOR UPDATE
    SKIP LOCKED; take the row's advisory lock on the worker's connection; set ``sending``;
    commit), make the request in a thread with no transaction open, then store the outcome and
    stage result events in one transaction, and release the lock. Outcomes:

    * accepted: status ``accepted`` + sid;
    * rejected (4xx): ``failed``, target.failed(REJECTED);
    * surely not sent (connect failure, 429): back to ``pending`` with exponential backoff, until
      ``dispatch_max_attempts`` tries, then ``failed``, target.failed(UNREACHABLE);
    * anything else: ``unknown``, target.failed(UNKNOWN). Never retried.

    ``recover_abandoned`` (at start and every ``dispatch_recovery_interval_seconds``) settles rows
    that are ``sending`` while nobody holds their advisory lock (the worker's process died during
    the request): ``accepted`` if a status callback already told us the sid, else ``unknown``.

    A shutdown (``stop()`` or cancellation) lets a request in flight finish and be recorded.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        table: Table,
        target: DispatchTarget,
        client: Client,
        settings: TwilioSettings,
        *,
        name: str = "dispatcher",
    ) -> None:
        self._engine = engine
        self._table = table
        self._target = target
        self._client = client
        self._settings = settings
        self._name = name
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._in_flight: set[asyncio.Future[Any]] = set()

    def wake(self) -> None:
        """Look for due rows now rather than at the next poll (called after new rows commit)."""
        self._wake.set()

    async def run(self) -> None:
        """Recover abandoned rows, then dispatch until ``stop()``."""
        self._stopping.clear()
        await self._guarded(self.recover_abandoned)
        workers = [
            asyncio.create_task(self._worker(i), name=f"{self._name}-worker-{i}")
            for i in range(self._settings.dispatch_concurrency)
        ]
        recovery = asyncio.create_task(self._recovery_loop(), name=f"{self._name}-recovery")
        tasks = [*workers, recovery]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def stop(self) -> None:
        """Finish the requests in flight, record them, and make ``run()`` return."""
        self._stopping.set()
        self._wake.set()
        if self._in_flight:
            await asyncio.wait(set(self._in_flight))

    async def dispatch_next(self) -> bool:
        """Claim one due row and make its request; False when no row was due."""
        async with self._engine.connect() as conn:
            try:
                row = await self._claim(conn)
            except BaseException:
                # The claim may have taken the session-level lock before failing; a connection
                # holding it must not go back to the pool.
                await conn.invalidate()
                raise
            if row is None:
                return False
            key = _lock_key(row["command_id"])
            try:
                outcome, sid, error = await self._request(row)
                await self._record(conn, row, outcome, sid, error)
            finally:
                await self._release(conn, key)
            return True

    async def recover_abandoned(self) -> int:
        """Settle rows left ``sending`` by a dead worker; return how many were settled."""
        t = self._table
        settled = 0
        async with self._engine.begin() as conn:
            rows = (
                (
                    await conn.execute(
                        select(t)
                        .where(t.c.status == DispatchStatus.SENDING.value)
                        .order_by(t.c.claimed_at)
                        .limit(100)
                        .with_for_update(skip_locked=True)
                    )
                )
                .mappings()
                .all()
            )
            for found in rows:
                row = dict(found)
                alive = not (
                    await conn.execute(select(func.pg_try_advisory_xact_lock(_lock_key(row["command_id"]))))
                ).scalar_one()
                if alive:
                    continue  # its worker is making the request right now
                settled += 1
                if row["twilio_sid"]:
                    await self._set_status(conn, row, DispatchStatus.ACCEPTED)
                    TWILIO_ABANDONED_REQUESTS.labels("accepted").inc()
                    await self._target.accepted(conn, row, row["twilio_sid"])
                    continue
                failure = DispatchFailure(
                    FailureKind.UNKNOWN,
                    "the process stopped while the request to Twilio was in flight; "
                    "not resent so that it cannot happen twice",
                )
                await self._set_status(conn, row, DispatchStatus.UNKNOWN, failure.reason)
                TWILIO_ABANDONED_REQUESTS.labels("unknown").inc()
                logger.error(
                    "twilio request abandoned by a dead worker: outcome unknown, not resent",
                    extra={
                        "command_id": str(row["command_id"]),
                        "tenant": row["tenant_id"],
                        "operation": self._target.operation,
                    },
                )
                await self._target.failed(conn, row, failure)
        return settled

    # -- internals ---------------------------------------------------------------------------------

    async def _worker(self, index: int) -> None:
        backoff = 0.0
        while not self._stopping.is_set():
            # Shielded: a cancellation (shutdown) must not cut a claimed row off between its
            # request and the record of its outcome; it waits for this iteration to end instead.
            step = asyncio.ensure_future(self._guarded(self.dispatch_next))
            self._in_flight.add(step)
            step.add_done_callback(self._in_flight.discard)
            try:
                worked = await asyncio.shield(step)
            except asyncio.CancelledError:
                # The step is bounded (request timeout + two short transactions); repeated
                # cancellations (the task group, then serve()) must not cut it short either.
                while not step.done():
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait({step})
                raise
            if worked is None:  # an error was logged; back off so a broken database is not hammered
                backoff = min(30.0, max(1.0, backoff * 2))
                await self._sleep(backoff)
                continue
            backoff = 0.0
            if not worked:
                await self._sleep(self._settings.dispatch_poll_interval_ms / 1000)

    async def _recovery_loop(self) -> None:
        while not self._stopping.is_set():
            await self._sleep(self._settings.dispatch_recovery_interval_seconds, wakeable=False)
            if not self._stopping.is_set():
                await self._guarded(self.recover_abandoned)

    async def _sleep(self, seconds: float, *, wakeable: bool = True) -> None:
        event = self._wake if wakeable else self._stopping
        await wait_event(event, seconds)
        if wakeable and not self._stopping.is_set():
            self._wake.clear()

    async def _guarded(self, step: Callable[[], Awaitable[T]]) -> T | None:
        """Run ``step``; log and swallow its error (the loop retries later) and return None."""
        try:
            return await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("%s step failed; retrying later", self._name)
            return None

    async def _claim(self, conn: AsyncConnection) -> OutgoingRow | None:
        """Mark the oldest due pending row ``sending`` under this connection's advisory lock."""
        t = self._table
        due = (
            select(t.c.command_id)
            .where(t.c.status == DispatchStatus.PENDING.value, t.c.next_attempt_at <= func.now())
            .order_by(t.c.next_attempt_at, t.c.created_at)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        async with conn.begin():
            command_id = (await conn.execute(due)).scalar_one_or_none()
            if command_id is None:
                return None
            # Session-level lock, taken before 'sending' becomes visible: whoever sees the row
            # 'sending' can tell from this lock whether its worker is alive.
            await conn.execute(select(func.pg_advisory_lock(_lock_key(command_id))))
            row = (
                (
                    await conn.execute(
                        update(t)
                        .where(t.c.command_id == command_id)
                        .values(
                            status=DispatchStatus.SENDING.value,
                            attempts=t.c.attempts + 1,
                            claimed_at=func.now(),
                            updated_at=func.now(),
                        )
                        .returning(t)
                    )
                )
                .mappings()
                .one()
            )
        return dict(row)

    async def _release(self, conn: AsyncConnection, key: int) -> None:
        try:
            async with conn.begin():
                await conn.execute(select(func.pg_advisory_unlock(key)))
        except Exception:
            # A connection that may still hold the lock must not go back to the pool: the row
            # would look alive forever. Dropping it releases the lock on the server.
            logger.exception("could not release a dispatch lock; discarding the connection")
            await conn.invalidate()

    async def _request(self, row: OutgoingRow) -> tuple[RequestOutcome, str | None, BaseException | None]:
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            sid = await asyncio.to_thread(self._target.send, self._client, row)
        except Exception as exc:  # classified below: nothing may escape un-recorded
            outcome, sid, error = classify_twilio_error(exc), None, exc
        else:
            outcome, error = RequestOutcome.ACCEPTED, None
        TWILIO_REQUEST_SECONDS.labels(self._target.operation, outcome.value).observe(
            time.perf_counter() - started
        )
        crash_point(CRASH_AFTER_TWILIO_ANSWER)
        return outcome, sid, error

    async def _record(
        self,
        conn: AsyncConnection,
        claimed: OutgoingRow,
        outcome: RequestOutcome,
        sid: str | None,
        error: BaseException | None,
    ) -> None:
        t = self._table
        command_id = claimed["command_id"]
        log_extra = {
            "command_id": str(command_id),
            "tenant": claimed["tenant_id"],
            "operation": self._target.operation,
        }
        async with conn.begin():
            row = await lock_row(conn, t, command_id)
            assert row is not None, "outgoing rows are never deleted"
            if outcome is not RequestOutcome.ACCEPTED and row["twilio_sid"]:
                # A status callback arrived during the request: whatever the request's own
                # answer was, Twilio has the resource, so the row is accepted, not failed.
                logger.warning(
                    "twilio request failed but a callback had already given its sid",
                    extra={**log_extra, "error": repr(error)},
                )
                outcome, sid = RequestOutcome.ACCEPTED, row["twilio_sid"]
            if outcome is RequestOutcome.ACCEPTED:
                assert sid is not None
                await conn.execute(
                    update(t)
                    .where(t.c.command_id == command_id)
                    .values(
                        status=DispatchStatus.ACCEPTED.value,
                        twilio_sid=func.coalesce(t.c.twilio_sid, sid),
                        last_error=None,
                        updated_at=func.now(),
                    )
                )
                logger.info("twilio accepted the request", extra={**log_extra, "sid": sid})
                await self._target.accepted(conn, row, sid)
                return
            assert error is not None
            description, code, twilio_message = describe_twilio_error(error)
            if outcome is RequestOutcome.RETRY and row["attempts"] < self._settings.dispatch_max_attempts:
                delay = self._settings.dispatch_retry_base_seconds * 2 ** (row["attempts"] - 1)
                await conn.execute(
                    update(t)
                    .where(t.c.command_id == command_id)
                    .values(
                        status=DispatchStatus.PENDING.value,
                        last_error=description,
                        next_attempt_at=func.now() + timedelta(seconds=delay),
                        updated_at=func.now(),
                    )
                )
                logger.warning(
                    "twilio not reached; retrying later",
                    extra={**log_extra, "error": description, "retry_in_seconds": delay},
                )
                return
            if outcome is RequestOutcome.REJECTED:
                failure = DispatchFailure(FailureKind.REJECTED, description, code, twilio_message)
                status = DispatchStatus.FAILED
            elif outcome is RequestOutcome.RETRY:
                failure = DispatchFailure(
                    FailureKind.UNREACHABLE,
                    f"Twilio could not be reached in {row['attempts']} attempts ({description})",
                )
                status = DispatchStatus.FAILED
            else:
                failure = DispatchFailure(
                    FailureKind.UNKNOWN,
                    f"the request to Twilio ended without a clear answer ({description}); "
                    "not resent so that it cannot happen twice",
                    code,
                )
                status = DispatchStatus.UNKNOWN
            await self._set_status(conn, row, status, failure.reason)
            log = logger.error if status is DispatchStatus.UNKNOWN else logger.warning
            log(
                "twilio request did not succeed",
                extra={
                    **log_extra,
                    "error": description,
                    "error_code": code,
                    "settled_as": status.value,
                    "details": getattr(error, "details", None),
                },
            )
            await self._target.failed(conn, row, failure)

    async def _set_status(
        self, conn: AsyncConnection, row: OutgoingRow, status: DispatchStatus, last_error: str | None = None
    ) -> None:
        t = self._table
        await conn.execute(
            update(t)
            .where(t.c.command_id == row["command_id"])
            .values(status=status.value, last_error=last_error, updated_at=func.now())
        )


# --- assembling a Twilio-facing service -----------------------------------------------------------

S = TypeVar("S", bound=TwilioSettings)


class ServiceLoop(Protocol):
    """A background loop a service adds to the wiring: ``run`` until ``stop`` (or cancellation)."""

    async def run(self) -> None: ...

    async def stop(self) -> None: ...


def _no_loops(settings: Any, engine: AsyncEngine, client: Client) -> Sequence[ServiceLoop]:
    return ()


@dataclass(frozen=True)
class TwilioServiceSpec(Generic[S]):
    """What differs between the Twilio-facing services; ``build_twilio_service`` wires the rest.

    ``S`` is the service's settings class: the factories below receive the settings the service
    was started with.
    """

    migrations_dir: Path
    commands_topic: str
    table: Table
    target: Callable[[S], DispatchTarget]
    intake: Callable[[AsyncEngine, Callable[[], None]], BatchHandler]
    """Builds the commands consumer's handler; the callable it gets wakes the dispatcher."""
    router: Callable[[S, AsyncEngine, IdentityStore], APIRouter]
    """Builds the webhook routes (``/twilio/...``). The identity store is for routes that learn a
    tenant from their URL (``IdentityStore.tenant_exists``); it connects on first use only."""
    loops: Callable[[S, AsyncEngine, Client], Sequence[ServiceLoop]] = _no_loops
    """The service's own background loops, given the engine and the SDK client the dispatcher
    uses. They run and stop like the built-in ones (stopped before the engine is disposed)."""


@dataclass
class TwilioService:
    """A wired, not yet running Twilio-facing service (also what integration tests start)."""

    app: FastAPI
    engine: AsyncEngine
    dispatcher: Dispatcher
    identity: IdentityStore
    loops: list[ServiceLoop] = field(default_factory=list)
    """The spec's own loops (already among ``background``)."""
    background: list[BackgroundLoop] = field(default_factory=list)
    on_shutdown: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


async def build_twilio_service(settings: S, spec: TwilioServiceSpec[S]) -> TwilioService:
    """Check the Twilio settings, migrate the database, ensure the topics, wire every component.

    Background loops: the outbox relay, the commands consumer, the dispatcher (never the consumer
    itself calls Twilio, so no partition is held during a request) and the spec's own ``loops``.
    The identity store (``IDENTITY_DATABASE_URL``, a pool of 2) is opened lazily: it is read only
    by routes that need it, and sending does not depend on it. It is on ``app.state.identity``
    too, so ``manual_actions.auth.require_roles`` works on these apps.
    """
    missing = settings.missing_twilio_settings()
    if missing:
        raise SystemExit(f"{settings.service_name}: Twilio is not configured; set {', '.join(missing)}")
    if not settings.consumer_group_id:
        raise SystemExit(f"{settings.service_name}: CONSUMER_GROUP_ID is empty")
    core = await start_core(settings, spec.migrations_dir)
    engine, producer = core.engine, core.producer
    client = make_client(settings)
    dispatcher = Dispatcher(
        engine,
        spec.table,
        spec.target(settings),
        client,
        settings,
        name=f"{settings.service_name}-dispatcher",
    )
    consumer = BatchConsumer(
        settings,
        group_id=settings.consumer_group_id,
        topics=[spec.commands_topic],
        handler=spec.intake(engine, dispatcher.wake),
        producer=producer,
    )
    identity = IdentityStore(create_engine(settings.identity_database_url, pool_size=IDENTITY_POOL_SIZE))
    loops = list(spec.loops(settings, engine, client))

    async def database_reachable() -> None:
        async with engine.connect() as conn:
            await conn.execute(select(1))

    app = create_app(settings.service_name, readiness_checks=[("database", database_reachable)])
    app.state.identity = identity
    app.include_router(spec.router(settings, engine, identity))
    return TwilioService(
        app=app,
        engine=engine,
        dispatcher=dispatcher,
        identity=identity,
        loops=loops,
        background=[core.relay.run, consumer.run, dispatcher.run, *(loop.run for loop in loops)],
        # The consumer dead-letters through the producer, so it stops before the producer; the
        # dispatcher finishes its requests in flight and the spec's loops stop before the engine
        # goes.
        on_shutdown=[
            consumer.stop,
            dispatcher.stop,
            *(loop.stop for loop in loops),
            *core.shutdown_steps(),
            identity.engine.dispose,
        ],
    )


async def run_twilio_service(settings: S, spec: TwilioServiceSpec[S]) -> None:
    """Build the service and serve it until SIGTERM/SIGINT (``manual_actions.service.serve``)."""
    service = await build_twilio_service(settings, spec)
    await serve(service.app, settings, background=service.background, on_shutdown=service.on_shutdown)


def twilio_main(settings: S, spec: TwilioServiceSpec[S]) -> None:
    """A Twilio-facing service's console entry point: JSON logs, then ``run_twilio_service``."""
    configure_logging(settings.service_name, settings.log_level)
    run_service(run_twilio_service(settings, spec))


__all__ = [
    "CRASH_AFTER_TWILIO_ANSWER",
    "SIGNATURE_HEADER",
    "DispatchFailure",
    "DispatchStatus",
    "DispatchTarget",
    "Dispatcher",
    "FailureKind",
    "RequestOutcome",
    "ServiceLoop",
    "TwilioParams",
    "TwilioService",
    "TwilioServiceSpec",
    "TwilioSettings",
    "build_twilio_service",
    "callback_schema",
    "classify_twilio_error",
    "command_intake",
    "create_twilio_tables",
    "describe_twilio_error",
    "drop_twilio_tables",
    "lock_row",
    "make_client",
    "outgoing_schema",
    "record_callback",
    "required_param",
    "run_twilio_service",
    "stage_result",
    "twilio_main",
    "twilio_request_verifier",
    "unknown_command",
    "url_as_twilio_saw_it",
]
