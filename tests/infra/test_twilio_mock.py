"""The Twilio contract mock, driven by the official ``twilio`` SDK.

Prism checks every request against Twilio's OpenAPI contract; the proxy in front of it gives
unique SIDs, signed status callbacks and Twilio's magic test numbers. Callbacks are received by a
plain HTTP server started here and verified with the SDK's own ``RequestValidator``.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from devstack import Stack
from manual_actions.twilio_http import RewritingTwilioHttpClient, rewrite_twilio_url, twilio_http_client

pytestmark = pytest.mark.integration

FROM = "+15005550006"  # Twilio's magic "valid sender" number
SID = re.compile(r"^(SM|CA)[0-9a-f]{32}$")


@dataclass
class Received:
    path: str
    signature: str | None
    params: dict[str, str]


@dataclass
class CallbackServer:
    """Records every form POST it receives; ``wait`` polls for the expected ones."""

    port: int = 0
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait(self, path: str, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                got = [r for r in self.received if r.path == path]
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise AssertionError(f"expected {count} callbacks on {path}, got {len(got)}: {got}")


@pytest.fixture(scope="module")
def callbacks() -> Iterator[CallbackServer]:
    server_state = CallbackServer()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length).decode()
            with server_state.lock:
                server_state.received.append(
                    Received(self.path, self.headers.get("X-Twilio-Signature"), dict(parse_qsl(body)))
                )
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server_state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server_state
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def client(stack: Stack) -> Client:
    return Client(
        stack.twilio_account_sid,
        stack.twilio_auth_token,
        http_client=RewritingTwilioHttpClient(stack.twilio_base_url, timeout=10),
    )


def _assert_signed(stack: Stack, server: CallbackServer, received: Received) -> None:
    validator = RequestValidator(stack.twilio_auth_token)
    assert received.signature, "callback carries no X-Twilio-Signature"
    assert validator.validate(server.url(received.path), received.params, received.signature)
    # And a different token must not validate it: the signature really depends on the token.
    assert not RequestValidator("0" * 32).validate(
        server.url(received.path), received.params, received.signature
    )


def _mock_requests(stack: Stack) -> list[dict[str, Any]]:
    response = httpx.get(f"{stack.twilio_base_url}/__mock/requests", timeout=10)
    response.raise_for_status()
    return list(response.json())


def test_sms_gets_unique_sid_and_signed_sent_then_delivered_callbacks(
    stack: Stack, client: Client, callbacks: CallbackServer
) -> None:
    path = "/sms-status/1"
    first = client.messages.create(
        to="+14155550101", from_=FROM, body="Hello from the tests", status_callback=callbacks.url(path)
    )
    second = client.messages.create(to="+14155550102", from_=FROM, body="Second")

    assert first.sid and SID.match(first.sid) and first.sid.startswith("SM")
    assert second.sid and second.sid != first.sid
    assert (first.to, first.body, first.status, first.from_) == (
        "+14155550101",
        "Hello from the tests",
        "queued",
        FROM,
    )
    assert first.account_sid == stack.twilio_account_sid

    got = callbacks.wait(path, 2)
    assert [r.params["MessageStatus"] for r in got] == ["sent", "delivered"]
    for received in got:
        assert received.params["MessageSid"] == first.sid == received.params["SmsSid"]
        assert received.params["AccountSid"] == stack.twilio_account_sid
        assert received.params["To"] == "+14155550101"
        assert received.params["From"] == FROM
        assert received.params["ApiVersion"] == "2010-04-01"
        _assert_signed(stack, callbacks, received)

    logged = [r for r in _mock_requests(stack) if r["sid"] == first.sid]
    assert len(logged) == 1
    assert logged[0]["method"] == "POST" and logged[0]["status"] == 201
    assert logged[0]["params"]["Body"] == "Hello from the tests"


def test_call_reports_requested_events_then_completed_with_duration(
    stack: Stack, client: Client, callbacks: CallbackServer
) -> None:
    path = "/call-status/answered"
    call = client.calls.create(
        to="+14155550103",
        from_=FROM,
        url="http://127.0.0.1:9/twiml",
        status_callback=callbacks.url(path),
        status_callback_event=["ringing", "answered", "completed"],
    )
    assert call.sid and call.sid.startswith("CA") and SID.match(call.sid)
    assert (call.to, call.status) == ("+14155550103", "queued")

    got = callbacks.wait(path, 3)
    assert [r.params["CallStatus"] for r in got] == ["ringing", "in-progress", "completed"]
    assert got[-1].params["CallDuration"] == "5"
    assert all(r.params["CallSid"] == call.sid for r in got)
    for received in got:
        _assert_signed(stack, callbacks, received)

    # The repeated StatusCallbackEvent keys reached the mock (and passed Prism) as a list.
    logged = [r for r in _mock_requests(stack) if r["sid"] == call.sid]
    assert logged[0]["params"]["StatusCallbackEvent"] == ["ringing", "answered", "completed"]


@pytest.mark.parametrize(("to", "final"), [("+14155550002", "busy"), ("+14155550003", "no-answer")])
def test_magic_call_numbers_end_busy_or_unanswered(
    stack: Stack, client: Client, callbacks: CallbackServer, to: str, final: str
) -> None:
    path = f"/call-status/{final}"
    client.calls.create(
        to=to, from_=FROM, url="http://127.0.0.1:9/twiml", status_callback=callbacks.url(path)
    )
    time.sleep(0.5)  # only one callback is due; give a wrong extra one the chance to show up
    got = callbacks.wait(path, 1)
    assert [r.params["CallStatus"] for r in got] == [final]
    assert got[0].params["CallDuration"] == "0"
    _assert_signed(stack, callbacks, got[0])


@pytest.mark.parametrize(("to", "code"), [("+15005550001", 21211), ("+15005550009", 21614)])
def test_magic_sms_numbers_fail_like_twilio(client: Client, to: str, code: int) -> None:
    with pytest.raises(TwilioRestException) as caught:
        client.messages.create(to=to, from_=FROM, body="x")
    assert caught.value.status == 400
    assert caught.value.code == code


def test_invalid_call_number_fails(client: Client) -> None:
    with pytest.raises(TwilioRestException) as caught:
        client.calls.create(to="+15005550001", from_=FROM, url="http://127.0.0.1:9/twiml")
    assert (caught.value.status, caught.value.code) == (400, 21217)


def test_request_violating_the_contract_is_rejected_with_400(stack: Stack, client: Client) -> None:
    # The SDK cannot omit To, so post the form directly, authenticated like the SDK.
    response = httpx.post(
        f"{stack.twilio_base_url}/2010-04-01/Accounts/{stack.twilio_account_sid}/Messages.json",
        data={"From": FROM, "Body": "no recipient"},
        auth=(stack.twilio_account_sid, stack.twilio_auth_token),
        timeout=10,
    )
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == 21604
    assert any("'To'" in item["message"] for item in body["validation"])

    # Through the SDK: a StatusCallback that is not a URI breaks the contract's "format: uri".
    with pytest.raises(TwilioRestException) as caught:
        client.messages.create(to="+14155550101", from_=FROM, body="x", status_callback="not a url")
    assert caught.value.status == 400


def test_wrong_credentials_are_refused(stack: Stack) -> None:
    wrong = Client(
        stack.twilio_account_sid, "f" * 32, http_client=RewritingTwilioHttpClient(stack.twilio_base_url)
    )
    with pytest.raises(TwilioRestException) as caught:
        wrong.messages.create(to="+14155550101", from_=FROM, body="x")
    assert (caught.value.status, caught.value.code) == (401, 20003)


def test_reset_clears_the_request_log(stack: Stack, client: Client) -> None:
    client.messages.create(to="+14155550105", from_=FROM, body="before reset")
    assert _mock_requests(stack)
    assert httpx.post(f"{stack.twilio_base_url}/__mock/reset", timeout=10).status_code == 204
    assert _mock_requests(stack) == []


def test_url_rewriting_only_touches_the_api_origin() -> None:
    base = "http://127.0.0.1:1234/"
    assert rewrite_twilio_url("https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json", base) == (
        "http://127.0.0.1:1234/2010-04-01/Accounts/AC1/Messages.json"
    )
    assert rewrite_twilio_url("https://api.twilio.community/x", base) == "https://api.twilio.community/x"
    assert rewrite_twilio_url("https://messaging.twilio.com/v1/Services", base) == (
        "https://messaging.twilio.com/v1/Services"
    )
    assert twilio_http_client("") is None
    assert isinstance(twilio_http_client(base), RewritingTwilioHttpClient)


def test_the_messages_list_and_fetch_show_the_messages_created(stack: Stack, client: Client) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    to = "+14155550131"
    first = client.messages.create(to=to, from_=FROM, body="first")
    second = client.messages.create(to=to, from_=FROM, body="second")
    client.messages.create(to="+14155550132", from_=FROM, body="to someone else")

    assert [m.sid for m in client.messages.list(to=to, from_=FROM)] == [second.sid, first.sid]

    def sent_after() -> list[Any]:
        return client.messages.list(to=to, from_=FROM, date_sent_after=before)

    deadline = time.monotonic() + 10
    while len(sent_after()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    listed = sent_after()
    assert [(m.sid, m.body, m.direction, m.to, m.from_) for m in listed] == [
        (second.sid, "second", "outbound-api", to, FROM),
        (first.sid, "first", "outbound-api", to, FROM),
    ]
    assert all(m.date_sent is not None and m.date_sent >= before.replace(microsecond=0) for m in listed)
    assert client.messages.list(to=to, date_sent_before=before) == []

    # Pages of one, followed by the SDK through next_page_uri.
    page = client.messages.page(to=to, page_size=1)
    assert [m.sid for m in page] == [second.sid]
    following = page.next_page()
    assert following is not None and [m.sid for m in following] == [first.sid]
    assert [m.sid for m in client.messages.stream(to=to, page_size=1)] == [second.sid, first.sid]

    fetched = client.messages(first.sid).fetch()
    assert (fetched.sid, fetched.body) == (first.sid, "first")
    until = time.monotonic() + 10
    while client.messages(first.sid).fetch().status != "delivered" and time.monotonic() < until:
        time.sleep(0.1)
    assert client.messages(first.sid).fetch().status == "delivered"
    with pytest.raises(TwilioRestException) as caught:
        client.messages("SM" + "0" * 32).fetch()
    assert (caught.value.status, caught.value.code) == (404, 20404)

    # Still validated against the contract by Prism: PageSize must be 1..1000.
    response = httpx.get(
        f"{stack.twilio_base_url}/2010-04-01/Accounts/{stack.twilio_account_sid}/Messages.json",
        params={"PageSize": "0"},
        auth=(stack.twilio_account_sid, stack.twilio_auth_token),
        timeout=10,
    )
    assert response.status_code == 400 and response.json()["validation"]
