"""Reconciliation of unknown outcomes against the Twilio contract mock, real Kafka and PostgreSQL.

The mock (Prism) validates our list and fetch requests against Twilio's spec and answers with the
spec's example page: two messages, one of them an outbound SMS "testing" to +18182008801 created
Fri, 24 May 2019 17:44:46 +0000, status sent, sid SMded05904ccb347238880ca9264e8fe1c. A row
shaped like that example's request is therefore "found"; any other row is "not found".
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
from twilio_harness import Harness, eventually

from manual_actions.contracts import SmsFailed, SmsSent, registry, topics
from manual_actions.twilio_support import SIGNATURE_HEADER, make_client
from sms_sender.adapters.tables import outgoing_sms
from sms_sender.handlers.reconcile import Reconciler
from sms_sender.settings import SmsSenderSettings

pytestmark = pytest.mark.integration

EXAMPLE_SID = "SMded05904ccb347238880ca9264e8fe1c"
EXAMPLE_TO = "+18182008801"
EXAMPLE_CREATED = datetime(2019, 5, 24, 17, 44, 46, tzinfo=UTC)


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


async def test_an_abandoned_request_twilio_did_send_is_reported_sent_not_unknown(sms: Harness) -> None:
    # What a process killed during the request for the example's SMS leaves: 'sending', no sid.
    command_id = await insert_row(
        sms, to=EXAMPLE_TO, body="testing", claimed_at=EXAMPLE_CREATED - timedelta(seconds=1)
    )

    [event] = await eventually(lambda: sms.results.for_command(command_id), what="the reconciled result")
    assert isinstance(event.data, SmsSent)
    assert (event.data.message_sid, event.data.delivery_status, event.data.to) == (
        EXAMPLE_SID,
        "sent",
        EXAMPLE_TO,
    )
    assert (event.sequence, event.tenant) == (1, "tenant-sms-reconcile")
    assert registry.validate_envelope(event.to_jsonable(), topics.SMS_RESULTS) == []
    row = await row_of(sms, command_id)
    assert (
        row["status"],
        row["twilio_sid"],
        row["result"],
        row["reconcile_at"],
        row["results_published"],
    ) == (
        "accepted",
        EXAMPLE_SID,
        "sent",
        None,
        1,
    )
    # The lookup went through the SDK to Twilio's list endpoint, filtered as the contract allows
    # (Prism validated it), and nothing was sent again.
    [lookup] = await list_requests_to(sms, EXAMPLE_TO)
    assert lookup["status"] == 200
    assert (
        "From=%2B15005550006" in lookup["query"] and "DateSent%3E=2019-05-24T17%3A42%3A45Z" in lookup["query"]
    )
    assert await sms.mock_requests(command_id) == []
    await asyncio.sleep(1.0)
    assert len(sms.results.for_command(command_id)) == 1


async def test_an_abandoned_request_twilio_does_not_show_is_reported_unknown_once(sms: Harness) -> None:
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
    reconciler = Reconciler(sms.service.engine, make_client(sms.settings), sms.settings)  # type: ignore[arg-type]
    await reconciler.reconcile(await row_of(sms, command_id))
    row = await row_of(sms, command_id)
    assert (row["result"], row["reconcile_at"]) == ("sent", None)
    async with sms.service.engine.connect() as conn:
        published = await conn.scalar(
            select(outgoing_sms.c.results_published).where(outgoing_sms.c.command_id == command_id)
        )
    assert published == 0
    assert sms.results.for_command(command_id) == []
