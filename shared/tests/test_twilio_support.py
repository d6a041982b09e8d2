"""``manual_actions.twilio_support``: settings, the SDK client, webhook signatures, and the
durable-intent dispatcher.

The dispatcher tests run against the session's real PostgreSQL (``stack``) with a stand-in for
the one Twilio request (the SDK call is what differs per service; the services' own integration
tests drive the real SDK against the Twilio contract mock). Network failures are real ones,
produced on loopback sockets.
"""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import requests
from fastapi import Depends
from sqlalchemy import Column, MetaData, Table, Text, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from manual_actions.contracts import Envelope, SendSms, SmsFailed, topics
from manual_actions.db import create_engine
from manual_actions.http import create_app
from manual_actions.kafka import Delivered, PermanentError
from manual_actions.outbox import outbox_table
from manual_actions.twilio_http import RewritingTwilioHttpClient
from manual_actions.twilio_support import (
    SIGNATURE_HEADER,
    Dispatcher,
    DispatchFailure,
    DispatchStatus,
    FailureKind,
    OutgoingRow,
    RequestOutcome,
    TwilioParams,
    TwilioSettings,
    callback_schema,
    classify_twilio_error,
    command_intake,
    describe_twilio_error,
    make_client,
    outgoing_schema,
    record_callback,
    stage_result,
    twilio_request_verifier,
)

ACCOUNT = "AC" + "0" * 32
TOKEN = "test-auth-token"


def settings(**overrides: Any) -> TwilioSettings:
    values: dict[str, Any] = {
        "service_name": "twilio-support-test",
        "twilio_account_sid": ACCOUNT,
        "twilio_auth_token": TOKEN,
        "twilio_from_number": "+15005550006",
        "twilio_request_timeout_seconds": 2.0,
        "dispatch_poll_interval_ms": 20,
        "dispatch_retry_base_seconds": 0.05,
        "dispatch_max_attempts": 2,
    }
    values.update(overrides)
    return TwilioSettings(**values)


# --- settings and client ------------------------------------------------------------------------


def test_missing_twilio_settings_are_named() -> None:
    empty = TwilioSettings(service_name="x")
    assert empty.missing_twilio_settings() == [
        "TWILIO_ACCOUNT_SID",
        "TWILIO_AUTH_TOKEN",
        "TWILIO_FROM_NUMBER",
    ]
    with pytest.raises(ValueError, match="TWILIO_ACCOUNT_SID"):
        make_client(empty)
    assert settings().missing_twilio_settings() == []


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWILIO_API_BASE_URL", "http://127.0.0.1:4010")
    monkeypatch.setenv("PUBLIC_BASE_URL", "https://hooks.example.com/sms/")
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "secret-from-env")
    loaded = TwilioSettings(service_name="x")
    assert loaded.twilio_api_base_url == "http://127.0.0.1:4010"
    assert loaded.twilio_auth_token.get_secret_value() == "secret-from-env"
    assert "secret-from-env" not in repr(loaded)
    assert loaded.public_url("/twilio/sms-status", command_id="c1") == (
        "https://hooks.example.com/sms/twilio/sms-status?command_id=c1"
    )


def test_public_url_defaults_to_the_http_listener() -> None:
    assert settings(http_port=8123).public_url("/twilio/x") == "http://127.0.0.1:8123/twilio/x"


def test_the_client_always_has_a_timeout_and_talks_to_real_twilio_without_a_base_url() -> None:
    client = make_client(settings(twilio_request_timeout_seconds=3.5))
    assert type(client.http_client) is TwilioHttpClient
    assert client.http_client.timeout == 3.5
    with_base = make_client(settings(twilio_api_base_url="http://127.0.0.1:4010/"))
    assert isinstance(with_base.http_client, RewritingTwilioHttpClient)
    assert with_base.http_client.timeout == 2.0


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every POST like Twilio's Messages resource and records what it got."""

    received: list[tuple[str, dict[str, list[str]], str | None]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        form = parse_qs(self.rfile.read(length).decode())
        self.received.append((self.path, form, self.headers.get("Authorization")))
        body = b'{"sid": "SM' + b"a" * 32 + b'", "status": "queued"}'
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def recording_server() -> Iterator[str]:
    _Recorder.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_client_sends_the_sdk_request_to_the_base_url(recording_server: str) -> None:
    client = make_client(settings(twilio_api_base_url=recording_server))
    message = client.messages.create(
        to="+14155550100", from_="+15005550006", body="hi", status_callback="http://127.0.0.1:1/cb"
    )
    assert message.sid == "SM" + "a" * 32
    [(path, form, authorization)] = _Recorder.received
    assert path == f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
    assert form == {
        "To": ["+14155550100"],
        "From": ["+15005550006"],
        "Body": ["hi"],
        "StatusCallback": ["http://127.0.0.1:1/cb"],
    }
    assert authorization is not None and authorization.startswith("Basic ")


# --- classifying failures ---------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _error_of(call: Callable[[], object]) -> BaseException:
    try:
        call()
    except Exception as exc:
        return exc
    raise AssertionError("expected the call to fail")


@pytest.fixture
def silent_server() -> Iterator[tuple[str, threading.Event]]:
    """Accepts connections and reads requests; answers nothing until told to hang up."""
    hang_up = threading.Event()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)

    def serve() -> None:
        conns = []
        while not hang_up.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.recv(65536)
            conns.append(conn)
        for conn in conns:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", hang_up
    finally:
        hang_up.set()
        thread.join()
        listener.close()


def test_a_refused_connection_is_retried_because_nothing_was_sent() -> None:
    client = make_client(settings(twilio_api_base_url=f"http://127.0.0.1:{_closed_port()}"))
    error = _error_of(lambda: client.messages.create(to="+14155550100", from_="+15005550006", body="x"))
    assert isinstance(error, requests.ConnectionError)
    assert classify_twilio_error(error) is RequestOutcome.RETRY


def test_a_read_timeout_is_unknown_because_twilio_may_have_acted(
    silent_server: tuple[str, threading.Event],
) -> None:
    url, _ = silent_server
    client = make_client(settings(twilio_api_base_url=url, twilio_request_timeout_seconds=0.3))
    error = _error_of(lambda: client.messages.create(to="+14155550100", from_="+15005550006", body="x"))
    assert isinstance(error, requests.ReadTimeout)
    assert classify_twilio_error(error) is RequestOutcome.UNKNOWN


def test_a_connection_dropped_after_the_request_is_unknown(
    silent_server: tuple[str, threading.Event],
) -> None:
    url, hang_up = silent_server
    client = make_client(settings(twilio_api_base_url=url, twilio_request_timeout_seconds=5))
    threading.Timer(0.3, hang_up.set).start()
    error = _error_of(lambda: client.messages.create(to="+14155550100", from_="+15005550006", body="x"))
    assert isinstance(error, requests.ConnectionError)
    assert classify_twilio_error(error) is RequestOutcome.UNKNOWN


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, RequestOutcome.REJECTED),
        (401, RequestOutcome.REJECTED),
        (404, RequestOutcome.REJECTED),
        (429, RequestOutcome.RETRY),
        (500, RequestOutcome.UNKNOWN),
        (503, RequestOutcome.UNKNOWN),
    ],
)
def test_twilio_http_errors(status: int, expected: RequestOutcome) -> None:
    assert classify_twilio_error(TwilioRestException(status, "/uri", "msg", 21211)) is expected


def test_twilio_errors_are_described_with_their_code_and_twilios_words() -> None:
    error = TwilioRestException(
        400, "/Messages.json", "Unable to create record: The 'To' number is invalid.", 21211, "POST"
    )
    assert describe_twilio_error(error) == (
        "HTTP 400 (Twilio error 21211): Unable to create record: The 'To' number is invalid.",
        21211,
        "The 'To' number is invalid.",
    )
    assert describe_twilio_error(requests.ReadTimeout("read timed out")) == (
        "ReadTimeout: read timed out",
        None,
        None,
    )


def test_any_other_error_is_unknown() -> None:
    assert classify_twilio_error(ValueError("bad JSON in the answer")) is RequestOutcome.UNKNOWN


# --- webhook signatures -------------------------------------------------------------------------------

PUBLIC = "https://hooks.example.com/edge"


@pytest.fixture
def webhook_client() -> httpx.AsyncClient:
    app = create_app("twilio-support-test")
    verified = twilio_request_verifier(settings(public_base_url=PUBLIC))

    @app.post("/twilio/hook")
    async def hook(params: TwilioParams = Depends(verified)) -> dict[str, str]:  # noqa: B008
        return dict(params)

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


def _signed(url: str, params: dict[str, str], token: str = TOKEN) -> dict[str, str]:
    return {SIGNATURE_HEADER: RequestValidator(token).compute_signature(url, params)}


async def test_a_correctly_signed_webhook_is_accepted(webhook_client: httpx.AsyncClient) -> None:
    params = {"MessageSid": "SM" + "1" * 32, "MessageStatus": "sent", "ErrorCode": ""}
    signed_url = f"{PUBLIC}/twilio/hook?command_id=abc"  # the URL as Twilio requested it
    response = await webhook_client.post(
        "/twilio/hook?command_id=abc", data=params, headers=_signed(signed_url, params)
    )
    assert response.status_code == 200, response.text
    assert response.json() == params  # blank values are kept (they are part of the signature)


@pytest.mark.parametrize(
    "tamper",
    ["wrong token", "wrong url", "changed param", "no header"],
)
async def test_a_badly_signed_webhook_is_refused(webhook_client: httpx.AsyncClient, tamper: str) -> None:
    params = {"MessageSid": "SM" + "1" * 32, "MessageStatus": "delivered"}
    url = f"{PUBLIC}/twilio/hook?command_id=abc"
    headers = {
        "wrong token": _signed(url, params, token="another-token"),
        "wrong url": _signed("http://testserver/twilio/hook?command_id=abc", params),
        "changed param": _signed(url, {**params, "MessageStatus": "failed"}),
        "no header": {},
    }[tamper]
    response = await webhook_client.post("/twilio/hook?command_id=abc", data=params, headers=headers)
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["field"] == f"header.{SIGNATURE_HEADER}"
    assert body["title"] == "Invalid Twilio signature"


# --- the dispatcher against the real PostgreSQL --------------------------------------------------------

metadata = MetaData()
outgoing = Table(
    "outgoing_test", metadata, *outgoing_schema("outgoing_test"), Column("to", Text, nullable=True)
)
callbacks = Table("outgoing_test_callbacks", metadata, *callback_schema("outgoing_test"))
outbox = outbox_table(metadata)


@pytest.fixture(scope="module")
async def engine(stack: Any) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(stack.database_url("twilio_support_tests"), pool_size=4)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
        await conn.run_sync(metadata.create_all)
    yield engine
    await engine.dispose()


class FakeTarget:
    """Stands in for the one SDK request; records what the dispatcher asked and reported."""

    operation = "fake.create"

    def __init__(self, behaviour: Callable[[OutgoingRow], str] | None = None) -> None:
        self.behaviour = behaviour or (lambda row: "SM" + uuid.uuid4().hex)
        self.sent: list[uuid.UUID] = []
        self.accepted_rows: list[tuple[uuid.UUID, str]] = []
        self.failures: list[tuple[uuid.UUID, DispatchFailure]] = []

    def send(self, client: Client, row: OutgoingRow) -> str:
        self.sent.append(row["command_id"])
        return self.behaviour(row)

    async def accepted(self, conn: AsyncConnection, row: OutgoingRow, sid: str) -> None:
        self.accepted_rows.append((row["command_id"], sid))

    async def failed(self, conn: AsyncConnection, row: OutgoingRow, failure: DispatchFailure) -> None:
        self.failures.append((row["command_id"], failure))


def blocking_target(sid: str) -> tuple[FakeTarget, threading.Event, threading.Event]:
    """A target whose request blocks (in its thread) until ``release`` is set; ``started`` tells
    that the request is in flight."""
    started, release = threading.Event(), threading.Event()

    def slow(row: OutgoingRow) -> str:
        started.set()
        assert release.wait(10)
        return sid

    return FakeTarget(slow), started, release


def dispatcher(engine: AsyncEngine, target: FakeTarget, **overrides: Any) -> Dispatcher:
    config = settings(**overrides)
    return Dispatcher(engine, outgoing, target, Client(ACCOUNT, TOKEN), config)


async def new_row(engine: AsyncEngine, **values: Any) -> uuid.UUID:
    command_id = uuid.uuid4()
    async with engine.begin() as conn:
        # Older rows are claimed first: make every new row the oldest so it is the one claimed.
        await conn.execute(update(outgoing).where(outgoing.c.status == "pending").values(status="parked"))
        await conn.execute(
            insert(outgoing).values(
                command_id=command_id,
                tenant_id="t1",
                action_id=uuid.uuid4(),
                command_message_id=uuid.uuid4(),
                to="+14155550100",
                **values,
            )
        )
    return command_id


async def row_of(engine: AsyncEngine, command_id: uuid.UUID) -> OutgoingRow:
    async with engine.connect() as conn:
        found = (
            (await conn.execute(select(outgoing).where(outgoing.c.command_id == command_id))).mappings().one()
        )
    return dict(found)


@pytest.mark.integration
async def test_a_pending_row_is_requested_once_and_stored_accepted(engine: AsyncEngine) -> None:
    target = FakeTarget(lambda row: "SM" + "b" * 32)
    command_id = await new_row(engine)
    worker = dispatcher(engine, target)
    assert await worker.dispatch_next() is True
    assert await worker.dispatch_next() is False
    row = await row_of(engine, command_id)
    assert (row["status"], row["twilio_sid"], row["attempts"]) == ("accepted", "SM" + "b" * 32, 1)
    assert target.sent == [command_id]
    assert target.accepted_rows == [(command_id, "SM" + "b" * 32)]


@pytest.mark.integration
async def test_a_rejected_request_fails_with_twilios_code(engine: AsyncEngine) -> None:
    def reject(row: OutgoingRow) -> str:
        raise TwilioRestException(400, "/Messages.json", "Unable to create record: invalid To", 21211, "POST")

    target = FakeTarget(reject)
    command_id = await new_row(engine)
    assert await dispatcher(engine, target).dispatch_next()
    row = await row_of(engine, command_id)
    assert row["status"] == "failed"
    assert "invalid To" in row["last_error"]
    [(failed_id, failure)] = target.failures
    assert failed_id == command_id
    assert (failure.kind, failure.error_code) == (FailureKind.REJECTED, 21211)


@pytest.mark.integration
async def test_a_surely_unsent_request_is_retried_then_reported_unreachable(engine: AsyncEngine) -> None:
    refused = f"http://127.0.0.1:{_closed_port()}"

    def unreachable(row: OutgoingRow) -> str:
        requests.post(refused, timeout=1)
        raise AssertionError("the port should refuse connections")

    target = FakeTarget(unreachable)
    command_id = await new_row(engine)
    worker = dispatcher(engine, target, dispatch_max_attempts=2, dispatch_retry_base_seconds=0.2)
    assert await worker.dispatch_next()
    row = await row_of(engine, command_id)
    assert (row["status"], row["attempts"]) == ("pending", 1)
    assert target.failures == []
    assert await worker.dispatch_next() is False  # not due yet (backoff)
    await asyncio.sleep(0.3)
    assert await worker.dispatch_next()
    row = await row_of(engine, command_id)
    assert (row["status"], row["attempts"]) == ("failed", 2)
    assert target.sent == [command_id, command_id]
    [(_, failure)] = target.failures
    assert failure.kind is FailureKind.UNREACHABLE


@pytest.mark.integration
async def test_an_ambiguous_failure_is_never_retried(engine: AsyncEngine) -> None:
    def read_timeout(row: OutgoingRow) -> str:
        raise requests.ReadTimeout("read timed out")

    target = FakeTarget(read_timeout)
    command_id = await new_row(engine)
    worker = dispatcher(engine, target, dispatch_max_attempts=5)
    assert await worker.dispatch_next()
    assert await worker.dispatch_next() is False
    row = await row_of(engine, command_id)
    assert row["status"] == "unknown"
    assert target.sent == [command_id]
    [(_, failure)] = target.failures
    assert failure.kind is FailureKind.UNKNOWN
    assert "not resent" in failure.reason


@pytest.mark.integration
async def test_a_callback_during_a_failed_request_makes_the_row_accepted(engine: AsyncEngine) -> None:
    loop = asyncio.get_running_loop()
    sid = "SM" + "9" * 32

    async def callback(command_id: uuid.UUID) -> None:
        async with engine.begin() as conn:
            await record_callback(conn, outgoing, callbacks, command_id, sid=sid, status="sent", params={})

    def called_back_then_timed_out(row: OutgoingRow) -> str:
        asyncio.run_coroutine_threadsafe(callback(row["command_id"]), loop).result(10)
        raise requests.ReadTimeout("read timed out")

    target = FakeTarget(called_back_then_timed_out)
    command_id = await new_row(engine)
    assert await dispatcher(engine, target).dispatch_next()
    row = await row_of(engine, command_id)
    assert (row["status"], row["twilio_sid"]) == ("accepted", sid)
    assert target.failures == []
    assert target.accepted_rows == [(command_id, sid)]


@pytest.mark.integration
async def test_a_row_abandoned_in_sending_is_settled_unknown_and_never_sent(engine: AsyncEngine) -> None:
    target = FakeTarget()
    crashed = await new_row(engine, status="sending", attempts=1, claimed_at=func.now())
    called_back = await new_row(
        engine, status="sending", attempts=1, claimed_at=func.now(), twilio_sid="SM" + "c" * 32
    )
    worker = dispatcher(engine, target)
    assert await worker.recover_abandoned() == 2
    assert (await row_of(engine, crashed))["status"] == "unknown"
    assert (await row_of(engine, called_back))["status"] == "accepted"
    assert [(c, f.kind) for c, f in target.failures] == [(crashed, FailureKind.UNKNOWN)]
    assert target.accepted_rows == [(called_back, "SM" + "c" * 32)]
    assert await worker.dispatch_next() is False
    assert target.sent == []


@pytest.mark.integration
async def test_a_row_whose_worker_is_alive_is_left_alone(engine: AsyncEngine) -> None:
    target, started, release = blocking_target("SM" + "d" * 32)
    command_id = await new_row(engine)
    worker = dispatcher(engine, target)
    in_flight = asyncio.create_task(worker.dispatch_next())
    assert await asyncio.to_thread(started.wait, 10)
    assert (await row_of(engine, command_id))["status"] == "sending"
    # Another replica (or this one's periodic pass) must not touch a request that is running.
    assert await dispatcher(engine, FakeTarget()).recover_abandoned() == 0
    release.set()
    assert await in_flight
    assert (await row_of(engine, command_id))["status"] == "accepted"


@pytest.mark.integration
async def test_shutdown_waits_for_the_request_in_flight_and_records_it(engine: AsyncEngine) -> None:
    target, started, release = blocking_target("SM" + "e" * 32)
    command_id = await new_row(engine)
    worker = dispatcher(engine, target, dispatch_concurrency=1)
    running = asyncio.create_task(worker.run())
    assert await asyncio.to_thread(started.wait, 10)
    running.cancel()  # what serve() does on SIGTERM
    threading.Timer(0.3, release.set).start()
    with pytest.raises(asyncio.CancelledError):
        await running
    row = await row_of(engine, command_id)
    assert (row["status"], row["twilio_sid"]) == ("accepted", "SM" + "e" * 32)


@pytest.mark.integration
async def test_the_running_dispatcher_picks_up_new_rows_when_woken(engine: AsyncEngine) -> None:
    target = FakeTarget()
    worker = dispatcher(engine, target, dispatch_poll_interval_ms=5000)
    running = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(0.2)  # the workers found nothing and sleep for 5 s
        command_id = await new_row(engine)
        worker.wake()
        for _ in range(100):
            if (await row_of(engine, command_id))["status"] == "accepted":
                break
            await asyncio.sleep(0.02)
        assert (await row_of(engine, command_id))["status"] == "accepted"
    finally:
        await worker.stop()
        await running


# --- intake, results and callbacks -----------------------------------------------------------------------


def _send_sms(command_id: uuid.UUID, tenant: str = "t1") -> Envelope[SendSms]:
    payload = SendSms(
        command_id=command_id, action_id=uuid.uuid4(), to="+14155550100", body="hi", requested_by=None
    )
    return Envelope.wrap(
        payload, source="action-queue", tenant=tenant, subject=str(payload.action_id), sequence=1
    )


@pytest.mark.integration
async def test_intake_stores_a_redelivered_command_once(engine: AsyncEngine) -> None:
    woken: list[int] = []
    handler = command_intake(
        engine, outgoing, SendSms, lambda c: {"to": c.to}, stored=lambda: woken.append(1)
    )
    command_id = uuid.uuid4()
    first = _send_sms(command_id)
    again = first.model_copy(update={"id": uuid.uuid4()})  # the same command sent in a new envelope
    await handler([Delivered(first, topics.SMS_COMMANDS, 0, 1)])
    await handler([Delivered(first, topics.SMS_COMMANDS, 0, 1), Delivered(again, topics.SMS_COMMANDS, 0, 2)])
    async with engine.connect() as conn:
        rows = (
            (await conn.execute(select(outgoing).where(outgoing.c.command_id == command_id))).mappings().all()
        )
    assert len(rows) == 1
    assert (rows[0]["tenant_id"], rows[0]["command_message_id"], rows[0]["status"]) == (
        "t1",
        first.id,
        "pending",
    )
    assert woken == [1, 1]


@pytest.mark.integration
async def test_intake_refuses_a_message_of_another_type(engine: AsyncEngine) -> None:
    handler = command_intake(engine, outgoing, SendSms, lambda c: {"to": c.to})
    failed = SmsFailed(
        command_id=uuid.uuid4(), action_id=uuid.uuid4(), reason="x", failed_at=datetime.now(UTC)
    )
    envelope = Envelope.wrap(failed, source="x", tenant="t1", subject="s", sequence=1)
    with pytest.raises(PermanentError, match="SendSms"):
        await handler([Delivered(envelope, topics.SMS_COMMANDS, 0, 7)])


@pytest.mark.integration
async def test_results_of_one_command_get_consecutive_sequences(engine: AsyncEngine) -> None:
    command_id = await new_row(engine, status="unknown")
    row = await row_of(engine, command_id)
    payload = SmsFailed(
        command_id=command_id, action_id=row["action_id"], reason="r", failed_at=datetime.now(UTC)
    )
    async with engine.begin() as conn:
        first = await stage_result(conn, outgoing, command_id, payload, topic=topics.SMS_RESULTS, source="s")
        second = await stage_result(conn, outgoing, command_id, payload, topic=topics.SMS_RESULTS, source="s")
    assert (first.sequence, second.sequence) == (1, 2)
    assert first.subject == str(row["action_id"]) and first.tenant == "t1"
    assert first.causation_id == row["command_message_id"]
    async with engine.connect() as conn:
        staged = (
            await conn.execute(
                select(outbox.c.topic, outbox.c.key).where(outbox.c.message_id.in_([first.id, second.id]))
            )
        ).all()
    assert sorted(staged) == [(topics.SMS_RESULTS, str(row["action_id"]))] * 2


@pytest.mark.integration
async def test_a_callback_settles_an_unknown_row_as_accepted(engine: AsyncEngine) -> None:
    command_id = await new_row(engine, status="unknown")
    sid = "SM" + "f" * 32
    async with engine.begin() as conn:
        before = await record_callback(
            conn,
            outgoing,
            callbacks,
            command_id,
            sid=sid,
            status="delivered",
            params={"MessageSid": sid, "MessageStatus": "delivered"},
        )
        missing = await record_callback(
            conn, outgoing, callbacks, uuid.uuid4(), sid=sid, status="sent", params={}
        )
    assert before is not None and before["twilio_sid"] == sid and before["status"] == "unknown"
    assert missing is None
    row = await row_of(engine, command_id)
    assert (row["status"], row["twilio_sid"], row["twilio_status"]) == (
        DispatchStatus.ACCEPTED,
        sid,
        "delivered",
    )
    async with engine.connect() as conn:
        recorded = (
            await conn.execute(
                select(callbacks.c.twilio_status, callbacks.c.params).where(
                    callbacks.c.command_id == command_id
                )
            )
        ).all()
        assert (await conn.execute(text("SELECT count(*) FROM outgoing_test_callbacks"))).scalar_one() >= 1
    assert recorded == [("delivered", {"MessageSid": sid, "MessageStatus": "delivered"})]
