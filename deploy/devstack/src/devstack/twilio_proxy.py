"""The public face of the local Twilio mock: a proxy in front of Prism that adds Twilio's behaviour.

Prism validates every request against Twilio's official OpenAPI contract and answers with the
spec's static example. Prism cannot do what a Twilio client relies on beyond the contract, so this
proxy adds it:

* unique resource SIDs (``SM``/``CA`` + 32 hex) and the request's own ``to``/``from``/``body`` in
  the response, with ``status=queued``;
* status callbacks to the request's ``StatusCallback`` URL, form-encoded and signed exactly as
  Twilio signs them (``X-Twilio-Signature`` from ``RequestValidator(auth_token).compute_signature``);
  messages: ``sent`` then ``delivered``; calls: the events asked for in ``StatusCallbackEvent``
  (initiated, ringing, answered→``in-progress``) then always the final one (``completed`` with
  ``CallDuration``, or ``busy``/``no-answer``);
* Twilio's magic test numbers: To ``+15005550001`` is invalid (messages 21211, calls 21217),
  To ``+15005550009`` cannot receive SMS (21614); a call To ending ``0002`` ends ``busy`` and one
  ending ``0003`` ends ``no-answer``;
* Twilio-shaped errors: a request Prism rejects as invalid (422) becomes Twilio's 400 JSON error
  (``code``, ``message``, ``more_info``, ``status``) with Prism's findings under ``validation``;
  wrong credentials get 401 code 20003;
* the messages it created, as Twilio's Messages list (``GET .../Messages.json``, filtered by
  ``To``, ``From``, ``DateSent``/``DateSent<``/``DateSent>``, paged) and fetch
  (``GET .../Messages/{Sid}.json``) answer them (``devstack.twilio_messages``); those requests
  still go through Prism first, so they are validated against the contract;
* ``GET /__mock/requests`` (what Twilio was asked), ``GET /__mock/callbacks`` (what it sent back),
  ``POST /__mock/reset`` (forgets requests, callbacks and messages), ``GET /__mock/health``.

Callbacks are only sent to loopback hosts: nothing here may reach another machine.

Run: ``python -m devstack.twilio_proxy --port P --prism-url http://127.0.0.1:Q`` with
``TWILIO_MOCK_ACCOUNT_SID`` and ``TWILIO_MOCK_AUTH_TOKEN`` in the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ipaddress
import logging
import os
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from twilio.request_validator import RequestValidator

from devstack.twilio_messages import BadFilter, MessageStore, StoredMessage, list_page, twilio_date

log = logging.getLogger("devstack.twilio_proxy")

API_VERSION = "2010-04-01"
MESSAGES = re.compile(r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Messages\.json$")
MESSAGE = re.compile(r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Messages/(?P<sid>[^/]+)\.json$")
CALLS = re.compile(r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Calls\.json$")
INVALID_NUMBER = "+15005550001"
NOT_SMS_CAPABLE = "+15005550009"
# Hop-by-hop headers are the proxy's own business, not something to pass along.
_HOP_HEADERS = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "accept-encoding"}


@dataclass
class MockConfig:
    prism_url: str
    account_sid: str
    auth_token: str
    callback_delay: float = 0.1


@dataclass
class MockState:
    requests: list[dict[str, Any]] = field(default_factory=list)
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    messages: MessageStore = field(default_factory=MessageStore)


def new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def twilio_error(status: int, code: int, message: str, **extra: Any) -> JSONResponse:
    """An error body as Twilio returns it (the SDK reads ``code`` and ``message``)."""
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
        **extra,
    }
    return JSONResponse(body, status_code=status)


def form_to_dict(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Form pairs as a dict; a repeated key maps to the list of its values (in order)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            current = out[key]
            out[key] = [*current, value] if isinstance(current, list) else [current, value]
        else:
            out[key] = value
    return out


def _first(params: dict[str, Any], key: str) -> str | None:
    value = params.get(key)
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _as_list(params: dict[str, Any], key: str) -> list[str]:
    value = params.get(key)
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _validation_error(kind: str, prism_body: dict[str, Any]) -> JSONResponse:
    """Translate Prism's 422 problem into the 400 error Twilio returns for a bad parameter."""
    findings = prism_body.get("validation") or []
    messages = [str(item.get("message", "")) for item in findings]
    code, text = 20001, "; ".join(messages) or str(prism_body.get("detail", "Invalid request"))
    for item in findings:
        message = str(item.get("message", ""))
        if item.get("code") == "required" and "'To'" in message:
            code, text = (
                (21604, "A 'To' phone number is required.")
                if kind == "message"
                else (
                    21201,
                    "No 'To' number is specified",
                )
            )
            break
        if item.get("code") == "required" and "'From'" in message:
            code, text = (
                (21603, "A 'From' phone number is required.")
                if kind == "message"
                else (
                    21213,
                    "No 'From' number is specified",
                )
            )
            break
    return twilio_error(400, code, text, validation=findings)


def _check_credentials(request: Request, config: MockConfig) -> JSONResponse | None:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("basic "):
        return None  # let Prism answer 401 for a missing scheme, as the contract says
    try:
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return twilio_error(401, 20003, "Authenticate")
    if user != config.account_sid or password != config.auth_token:
        return twilio_error(401, 20003, "Authenticate")
    return None


def create_app(config: MockConfig) -> Starlette:
    state = MockState()
    validator = RequestValidator(config.auth_token)
    client_holder: dict[str, httpx.AsyncClient] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with httpx.AsyncClient(timeout=30.0, trust_env=False) as client:
            client_holder["client"] = client
            yield
            for task in list(state.tasks):
                task.cancel()

    def record(request: Request, params: dict[str, Any], status: int, sid: str | None) -> None:
        state.requests.append(
            {
                "method": request.method,
                "path": request.url.path,
                "query": request.url.query,
                "params": params,
                "status": status,
                "sid": sid,
                "time": time.time(),
            }
        )

    async def send_callback(url: str, method: str, params: dict[str, str]) -> None:
        entry: dict[str, Any] = {
            "url": url,
            "method": method,
            "params": params,
            "status": None,
            "error": None,
        }
        state.callbacks.append(entry)
        if not is_loopback_url(url):
            entry["error"] = "not sent: the mock only calls back to loopback addresses"
            return
        client = client_holder["client"]
        headers = {"User-Agent": "TwilioProxy/1.1", "I-Twilio-Idempotency-Token": secrets.token_hex(16)}
        try:
            if method == "GET":
                sep = "&" if urlsplit(url).query else "?"
                full = url + sep + urlencode(params)
                headers["X-Twilio-Signature"] = validator.compute_signature(full, {})
                response = await client.get(full, headers=headers)
            else:
                headers["X-Twilio-Signature"] = validator.compute_signature(url, params)
                response = await client.post(url, data=params, headers=headers)
            entry["status"] = response.status_code
        except httpx.HTTPError as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"
            log.warning("status callback to %s failed: %s", url, exc)

    def schedule(events: list[tuple[str, str, dict[str, str]]]) -> None:
        async def run() -> None:
            for url, method, params in events:
                await asyncio.sleep(config.callback_delay)
                await send_callback(url, method, params)

        task = asyncio.get_running_loop().create_task(run())
        state.tasks.add(task)
        task.add_done_callback(state.tasks.discard)

    def deliver_message(message: StoredMessage, params: dict[str, Any]) -> None:
        """Move the message to ``sent`` then ``delivered``, one step per ``callback_delay``, and post
        each status to the request's StatusCallback (if any) once the resource shows it."""
        url = _first(params, "StatusCallback")
        method = (_first(params, "StatusCallbackMethod") or "POST").upper()

        async def run() -> None:
            for status in ("sent", "delivered"):
                await asyncio.sleep(config.callback_delay)
                message.advance(status, datetime.now(UTC))
                if url:
                    await send_callback(
                        url,
                        method,
                        {
                            "MessageSid": message.sid,
                            "SmsSid": message.sid,
                            "AccountSid": str(message.resource["account_sid"]),
                            "From": _first(params, "From") or "",
                            "To": _first(params, "To") or "",
                            "MessageStatus": status,
                            "SmsStatus": status,
                            "ApiVersion": API_VERSION,
                        },
                    )

        task = asyncio.get_running_loop().create_task(run())
        state.tasks.add(task)
        task.add_done_callback(state.tasks.discard)

    def answer_from_store(request: Request, upstream: httpx.Response) -> Response | None:
        """Twilio's answer to a message list or fetch Prism accepted, from the messages created;
        None for any other request."""
        if request.method != "GET" or upstream.status_code != 200:
            return None
        path = request.url.path
        listing = MESSAGES.match(path)
        if listing:
            account = listing.group("account")
            query = parse_qsl(request.url.query, keep_blank_values=True)
            try:
                return JSONResponse(list_page(state.messages.of_account(account), path, query))
            except BadFilter as exc:
                return twilio_error(400, 20001, f"Invalid list filter: {exc}")
        single = MESSAGE.match(path)
        if single:
            found = state.messages.get(single.group("account"), single.group("sid"))
            if found is None:
                return twilio_error(404, 20404, f"The requested resource {path} was not found")
            return JSONResponse(dict(found.resource))
        return None

    def call_callbacks(
        account: str, sid: str, params: dict[str, Any]
    ) -> list[tuple[str, str, dict[str, str]]]:
        url = _first(params, "StatusCallback")
        if not url:
            return []
        method = (_first(params, "StatusCallbackMethod") or "POST").upper()
        to = _first(params, "To") or ""
        requested = {
            event.strip().lower()
            for value in _as_list(params, "StatusCallbackEvent")
            for event in value.split()
        }
        if to.endswith("0002"):
            final = "busy"
        elif to.endswith("0003"):
            final = "no-answer"
        else:
            final = "completed"
        steps: list[str] = []
        if "initiated" in requested:
            steps.append("initiated")
        if "ringing" in requested:
            steps.append("ringing")
        if "answered" in requested and final == "completed":
            steps.append("in-progress")
        steps.append(final)  # Twilio always reports the end of the call
        events = []
        for number, status in enumerate(steps):
            body = {
                "CallSid": sid,
                "AccountSid": account,
                "From": _first(params, "From") or "",
                "To": to,
                "CallStatus": status,
                "ApiVersion": API_VERSION,
                "Direction": "outbound-api",
                "CallbackSource": "call-progress-events",
                "SequenceNumber": str(number),
                "Timestamp": formatdate(usegmt=True),
            }
            if status == final:
                body["CallDuration"] = "5" if final == "completed" else "0"
            events.append((url, method, body))
        return events

    async def proxy(request: Request) -> Response:
        body = await request.body()
        content_type = request.headers.get("content-type", "")
        params = (
            form_to_dict(parse_qsl(body.decode(errors="replace"), keep_blank_values=True))
            if ("application/x-www-form-urlencoded" in content_type)
            else {}
        )
        denied = _check_credentials(request, config)
        if denied is not None:
            record(request, params, denied.status_code, None)
            return denied
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        try:
            upstream = await client_holder["client"].request(
                request.method,
                config.prism_url.rstrip("/") + request.url.path,
                params=request.url.query or None,
                content=body,
                headers=headers,
            )
        except httpx.HTTPError as exc:
            record(request, params, 502, None)
            return twilio_error(502, 20500, f"Twilio mock: Prism is unreachable ({exc})")
        path = request.url.path
        kind = "message" if MESSAGES.match(path) else "call" if CALLS.match(path) else None
        match = MESSAGES.match(path) or CALLS.match(path)
        if upstream.status_code == 422 and kind and request.method == "POST":
            response: Response = _validation_error(kind, upstream.json())
            record(request, params, response.status_code, None)
            return response
        if upstream.status_code == 422 and request.method == "GET" and MESSAGES.match(path):
            response = twilio_error(
                400, 20001, "Invalid list request", validation=upstream.json().get("validation") or []
            )
            record(request, params, response.status_code, None)
            return response
        stored_answer = answer_from_store(request, upstream)
        if stored_answer is not None:
            record(request, params, stored_answer.status_code, None)
            return stored_answer
        if not (match and kind and request.method == "POST" and upstream.status_code == 201):
            passthrough = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
            passthrough.pop("content-encoding", None)
            record(request, params, upstream.status_code, None)
            return Response(upstream.content, status_code=upstream.status_code, headers=passthrough)

        account = match.group("account")
        to = _first(params, "To") or ""
        if to == INVALID_NUMBER:
            code = 21211 if kind == "message" else 21217
            response = twilio_error(400, code, f"The 'To' number {to} is not a valid phone number.")
            record(request, params, 400, None)
            return response
        if kind == "message" and to == NOT_SMS_CAPABLE:
            response = twilio_error(400, 21614, f"'To' number {to} is not a valid mobile number")
            record(request, params, 400, None)
            return response

        resource = upstream.json()
        now = formatdate(usegmt=True)
        if kind == "message":
            sid = new_sid("SM")
            created = datetime.now(UTC)
            now = twilio_date(created)
            resource.update(
                {
                    "sid": sid,
                    "account_sid": account,
                    "to": to,
                    "from": _first(params, "From"),
                    "body": _first(params, "Body") or "",
                    "messaging_service_sid": _first(params, "MessagingServiceSid"),
                    "status": "queued",
                    "direction": "outbound-api",
                    "date_created": now,
                    "date_updated": now,
                    "date_sent": None,
                    "error_code": None,
                    "error_message": None,
                    "uri": f"/2010-04-01/Accounts/{account}/Messages/{sid}.json",
                    "subresource_uris": {
                        "media": f"/2010-04-01/Accounts/{account}/Messages/{sid}/Media.json"
                    },
                }
            )
            deliver_message(state.messages.add(resource, created), params)
            events = []
        else:
            sid = new_sid("CA")
            resource.update(
                {
                    "sid": sid,
                    "account_sid": account,
                    "to": to,
                    "to_formatted": to,
                    "from": _first(params, "From"),
                    "from_formatted": _first(params, "From"),
                    "status": "queued",
                    "direction": "outbound-api",
                    "date_created": now,
                    "date_updated": now,
                    "start_time": None,
                    "end_time": None,
                    "duration": None,
                    "price": None,
                    "uri": f"/2010-04-01/Accounts/{account}/Calls/{sid}.json",
                }
            )
            events = call_callbacks(account, sid, params)
        if events:
            schedule(events)
        record(request, params, 201, sid)
        return JSONResponse(resource, status_code=201)

    async def list_requests(request: Request) -> Response:
        return JSONResponse(state.requests)

    async def list_callbacks(request: Request) -> Response:
        return JSONResponse(state.callbacks)

    async def reset(request: Request) -> Response:
        state.requests.clear()
        state.callbacks.clear()
        state.messages.clear()
        return Response(status_code=204)

    async def health(request: Request) -> Response:
        try:
            # Any HTTP answer (even Prism's 404 for an unknown route) means Prism is serving.
            await client_holder["client"].get(config.prism_url.rstrip("/") + "/", timeout=2.0)
        except httpx.HTTPError as exc:
            return JSONResponse({"status": "prism unreachable", "error": str(exc)}, status_code=503)
        return JSONResponse({"status": "ok"})

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    routes = [
        Route("/__mock/requests", list_requests, methods=["GET"]),
        Route("/__mock/callbacks", list_callbacks, methods=["GET"]),
        Route("/__mock/reset", reset, methods=["POST"]),
        Route("/__mock/health", health, methods=["GET"]),
        Route("/{path:path}", proxy, methods=methods),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.twilio_proxy", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--prism-url", required=True)
    parser.add_argument(
        "--callback-delay", type=float, default=0.1, help="seconds before each status callback"
    )
    parser.add_argument("--tag", default="", help="ignored; lets the launcher recognise its own process")
    args = parser.parse_args(argv)
    account_sid = os.environ.get("TWILIO_MOCK_ACCOUNT_SID", "")
    auth_token = os.environ.get("TWILIO_MOCK_AUTH_TOKEN", "")
    if not account_sid or not auth_token:
        parser.error("TWILIO_MOCK_ACCOUNT_SID and TWILIO_MOCK_AUTH_TOKEN must be set")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    import uvicorn

    app = create_app(
        MockConfig(
            prism_url=args.prism_url,
            account_sid=account_sid,
            auth_token=auth_token,
            callback_delay=args.callback_delay,
        )
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
