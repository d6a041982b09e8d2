"""Reconciliation of unknown outcomes against the Twilio contract mock, real Kafka and PostgreSQL.

The mock answers Twilio's Messages list and fetch from the messages really created through it
(Prism still validates those requests against Twilio's spec), and moves each message to ``sent``
and ``delivered`` about 0.1 s apart, as Twilio does in its own time. A request "whose answer was
lost" is played by creating the SMS with the SDK, as the dispatcher would have, and leaving the
row ``sending`` with no worker, as a killed process leaves it.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import func, insert, select
from twilio.request_validator import RequestValidator
from twilio_harness import FROM_NUMBER, Harness, eventually

from manual_actions.contracts import SmsFailed, SmsSent, registry, topics
from manual_actions.twilio_support import SIGNATURE_HEADER, make_client
from sms_sender.adapters.tables import outgoing_sms
from sms_sender.handlers.reconcile import Reconciler
from sms_sender.settings import SmsSenderSettings

pytestmark = pytest.mark.integration

async def insert_row(sms: Harness, **values: Any) -> uuid.UUID:
    command_id = uuid.uuid4()
    row: dict[str, Any] = {
        "command_id": command_id,
        "tenant_id": "tenant-sms-reconcile",
        "action_id": uuid.uuid4(),
        "command_message_id": uuid.uuid4(),
        "to": "+14155550188",
        "body": "hello",
        "status": "sending",
        "attempts": 1,
        "claimed_at": func.now(),
        **values,
    }
    async with sms.service.engine.begin() as conn:
        await conn.execute(insert(outgoing_sms).values(**row))
    return command_id


async def create_requests_to(sms: Harness, number: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=sms.stack.twilio_base_url, timeout=10) as mock:
        logged = (await mock.get("/__mock/requests")).json()
    return [
        r
        for r in logged
        if r["method"] == "POST" and r["path"].endswith("/Messages.json") and r["params"].get("To") == number
    ]


async def row_of(sms: Harness, command_id: uuid.UUID) -> dict[str, Any]:
    [row] = await sms.rows(outgoing_sms, command_id)
    return row


async def list_requests_to(sms: Harness, number: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=sms.stack.twilio_base_url, timeout=10) as mock:
        logged = (await mock.get("/__mock/requests")).json()
    quoted = number.replace("+", "%2B")
    return [
        r
        for r in logged
        if r["method"] == "GET" and r["path"].endswith("/Messages.json") and f"To={quoted}" in r["query"]
    ]


async def create_at_twilio(sms: Harness, to: str, body: str) -> str:
    """Create the SMS through the SDK (as the dispatcher does) and wait until Twilio delivered it;
    its sid."""
    client = make_client(sms.settings)
    message = await asyncio.to_thread(client.messages.create, to=to, from_=FROM_NUMBER, body=body)
    sid = str(message.sid)

    async def delivered() -> bool:
        fetched = await asyncio.to_thread(client.messages(sid).fetch)
        return fetched.status == "delivered"

    await eventually(delivered, what="the mock delivered the SMS")
    return sid


async def test_an_abandoned_request_twilio_did_send_is_reported_sent_not_unknown(sms: Harness) -> None:
    # What a process killed during its request leaves: the SMS exists at Twilio, the row is
    # 'sending' with no sid and no live worker.
    to, body = "+14155550187", f"Your code is {uuid.uuid4().hex[:6]}"
    claimed_at = datetime.now(UTC)
    sid = await create_at_twilio(sms, to, body)
    command_id = await insert_row(sms, to=to, body=body, claimed_at=claimed_at)

    [event] = await eventually(lambda: sms.results.for_command(command_id), what="the reconciled result")
    assert isinstance(event.data, SmsSent)
    assert (event.data.message_sid, event.data.delivery_status, event.data.to) == (sid, "delivered", to)
    assert (event.sequence, event.tenant) == (1, "tenant-sms-reconcile")
    assert registry.validate_envelope(event.to_jsonable(), topics.SMS_RESULTS) == []
    row = await row_of(sms, command_id)
    assert (
        row["status"],
        row["twilio_sid"],
        row["result"],
        row["reconcile_at"],
        row["results_published"],
    ) == ("accepted", sid, "sent", None, 1)
    # The lookup went through the SDK to Twilio's list endpoint, filtered as the contract allows
    # (Prism validated it) from the claim minus the clock skew, and nothing was sent again.
    [lookup] = await list_requests_to(sms, to)
    assert lookup["status"] == 200
    assert isinstance(sms.settings, SmsSenderSettings)
    skew = timedelta(seconds=sms.settings.reconcile_clock_skew_seconds)
    since = (claimed_at - skew).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert "From=%2B15005550006" in lookup["query"]
    assert "DateSent%3E=" + since.replace(":", "%3A") in lookup["query"]
    assert len(await create_requests_to(sms, to)) == 1  # ours, above: nothing resent
    await asyncio.sleep(1.0)
    assert len(sms.results.for_command(command_id)) == 1


async def test_a_message_another_row_owns_is_not_taken(sms: Harness) -> None:
    # Two requests with the same text to the same number: one was recorded with its sid, the other
    # was abandoned. Twilio shows one message, which is the first row's: the second stays unknown.
    to, body = "+14155550186", "Same words twice"
    claimed_at = datetime.now(UTC)
    sid = await create_at_twilio(sms, to, body)
    await insert_row(
        sms, to=to, body=body, status="accepted", twilio_sid=sid, result="sent", claimed_at=claimed_at
    )
    command_id = await insert_row(sms, to=to, body=body, claimed_at=claimed_at)

    [event] = await eventually(lambda: sms.results.for_command(command_id), what="SmsFailed after the lookup")
    assert isinstance(event.data, SmsFailed)
    assert "Twilio's message list does not show it" in event.data.reason
    assert [r["status"] for r in await list_requests_to(sms, to)] == [200]
    assert (await row_of(sms, command_id))["twilio_sid"] is None


async def test_an_abandoned_request_twilio_does_not_show_is_reported_unknown_once(sms: Harness) -> None:
    # An SMS to that number exists at Twilio, but with another text: not this request's.
    await create_at_twilio(sms, "+14155550189", "another text")
    command_id = await insert_row(sms, to="+14155550189")

    [event] = await eventually(lambda: sms.results.for_command(command_id), what="SmsFailed after the lookup")
    assert isinstance(event.data, SmsFailed)
    assert "unknown outcome" in event.data.reason and "not resent" in event.data.reason
    assert "Twilio's message list does not show it" in event.data.reason
    assert len(await list_requests_to(sms, "+14155550189")) == 1
    row = await row_of(sms, command_id)
    assert (row["status"], row["result"], row["reconcile_at"], row["reconcile_lookups"]) == (
        "unknown",
        "unknown",
        None,
        0,
    )
    await asyncio.sleep(1.0)  # more passes: no second lookup, no second event
    assert len(await list_requests_to(sms, "+14155550189")) == 1
    assert len(sms.results.for_command(command_id)) == 1


async def test_a_status_callback_before_the_lookup_settles_it_alone(sms: Harness) -> None:
    # Deferred for lookup an hour from now: the callback comes first.
    sid = "SM" + uuid.uuid4().hex
    command_id = await insert_row(
        sms, to="+14155550190", status="unknown", reconcile_at=datetime.now(UTC) + timedelta(hours=1)
    )
    path = f"/twilio/sms-status?command_id={command_id}"
    params = {"MessageSid": sid, "MessageStatus": "delivered", "AccountSid": sms.stack.twilio_account_sid}
    signature = RequestValidator(sms.stack.twilio_auth_token).compute_signature(sms.public_url + path, params)
    response = await sms.http.post(path, data=params, headers={SIGNATURE_HEADER: signature})
    assert response.status_code == 204, response.text

    [event] = await eventually(lambda: sms.results.for_command(command_id), what="SmsSent from the callback")
    assert isinstance(event.data, SmsSent) and event.data.message_sid == sid
    row = await row_of(sms, command_id)
    assert (row["status"], row["result"], row["reconcile_at"]) == ("accepted", "sent", None)
    assert await list_requests_to(sms, "+14155550190") == []


async def test_when_twilio_cannot_be_asked_it_is_retried_then_reported_unknown(sms: Harness) -> None:
    # A reconciler whose credentials Twilio refuses (the mock answers 401), driven step by step on
    # a row the service's own loop will not pick up (not due for an hour).
    settings = SmsSenderSettings.model_validate(
        {
            **sms.settings.model_dump(),
            "twilio_auth_token": SecretStr("wrong-token"),
            "reconcile_max_lookups": 2,
            "reconcile_poll_interval_seconds": 60.0,
        }
    )
    reconciler = Reconciler(sms.service.engine, make_client(settings), settings)
    command_id = await insert_row(
        sms,
        to="+14155550191",
        status="unknown",
        reconcile_at=datetime.now(UTC) + timedelta(hours=1),
        last_error="the process stopped while the request to Twilio was in flight",
    )

    await reconciler.reconcile(await row_of(sms, command_id))
    row = await row_of(sms, command_id)
    assert (row["result"], row["reconcile_lookups"]) == (None, 1)
    assert row["reconcile_at"] > datetime.now(UTC) + timedelta(seconds=100)  # backoff: 60 s * 2
    [refused] = await list_requests_to(sms, "+14155550191")
    assert refused["status"] == 401

    await reconciler.reconcile(await row_of(sms, command_id))
    [event] = await eventually(lambda: sms.results.for_command(command_id), what="SmsFailed after giving up")
    assert isinstance(event.data, SmsFailed)
    assert "unknown outcome" in event.data.reason and "Twilio could not be asked" in event.data.reason
    assert "20003" in event.data.reason  # Twilio's authentication error, for whoever investigates
    row = await row_of(sms, command_id)
    assert (row["result"], row["reconcile_at"]) == ("unknown", None)


async def test_a_row_another_replica_already_settled_is_left_alone(sms: Harness) -> None:
    command_id = await insert_row(
        sms,
        to="+14155550192",
        status="accepted",
        twilio_sid="SM" + uuid.uuid4().hex,
        result="sent",
        reconcile_at=datetime.now(UTC) + timedelta(hours=1),
    )
    reconciler = Reconciler(sms.service.engine, make_client(sms.settings), sms.settings)
    await reconciler.reconcile(await row_of(sms, command_id))
    row = await row_of(sms, command_id)
    assert (row["result"], row["reconcile_at"]) == ("sent", None)
    async with sms.service.engine.connect() as conn:
        published = await conn.scalar(
            select(outgoing_sms.c.results_published).where(outgoing_sms.c.command_id == command_id)
        )
    assert published == 0
    assert sms.results.for_command(command_id) == []


async def test_the_shared_wiring_runs_the_reconciliation_loop_with_the_service(sms: Harness) -> None:
    # The loop comes from SPEC.loops: started with the relay, consumer and dispatcher, and stopped
    # before the engine is disposed.
    [reconciler] = sms.service.loops
    assert isinstance(reconciler, Reconciler)
    assert reconciler.run in sms.service.background
    shutdown = sms.service.on_shutdown
    assert shutdown.index(reconciler.stop) < shutdown.index(sms.service.engine.dispose)
