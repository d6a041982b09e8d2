"""sms-sender against the real Kafka, PostgreSQL and Twilio contract mock: one SMS per command
however often it is delivered, signed callbacks only, Twilio's refusals reported in words, and a
request interrupted by a crash reported as unknown instead of being sent again."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import func, insert
from twilio.request_validator import RequestValidator
from twilio_harness import Harness, eventually

from manual_actions.contracts import Envelope, SendSms, SmsFailed, SmsSent, registry, topics
from manual_actions.twilio_support import SIGNATURE_HEADER
from sms_sender.adapters.tables import outgoing_sms, sms_status_callbacks

pytestmark = pytest.mark.integration


def send_sms(to: str = "+14155550100", tenant: str = "tenant-sms-it") -> Envelope[SendSms]:
    command = SendSms(
        command_id=uuid.uuid4(),
        action_id=uuid.uuid4(),
        to=to,
        body="Hi Ada, it's Sam.",
        requested_by=uuid.uuid4(),
    )
    return Envelope.wrap(
        command, source="action-queue", tenant=tenant, subject=str(command.action_id), sequence=1
    )


async def test_a_command_delivered_twice_is_sent_once_and_reported_sent_once(sms: Harness) -> None:
    envelope = send_sms()
    command_id = envelope.data.command_id
    await sms.produce(topics.SMS_COMMANDS, envelope)
    await sms.produce(topics.SMS_COMMANDS, envelope)  # a redelivery
    await sms.produce(topics.SMS_COMMANDS, envelope.model_copy(update={"id": uuid.uuid4()}))  # a resend

    def sent() -> list[Envelope[Any]]:
        return [e for e in sms.results.for_command(command_id) if e.type == "SmsSent"]

    await eventually(sent, what="SmsSent on sms-results")
    # The mock reports 'sent' then 'delivered': wait for both callbacks to be handled.
    await eventually(lambda: _statuses(sms, command_id), what="both status callbacks recorded")
    await asyncio.sleep(0.5)  # time for a wrong second request or event to show up

    [request] = await sms.mock_requests(command_id)
    assert request["status"] == 201
    assert request["params"]["To"] == "+14155550100"
    assert request["params"]["From"] == "+15005550006"
    assert request["params"]["Body"] == "Hi Ada, it's Sam."
    results = sms.results.for_command(command_id)
    assert [e.type for e in results if e.data.message_sid == request["sid"]] == ["SmsSent"]
    [event] = [e for e in results if e.data.message_sid == request["sid"]]
    assert isinstance(event.data, SmsSent)
    assert (event.source, event.tenant, event.subject, event.sequence, event.causation_id) == (
        "sms-sender",
        "tenant-sms-it",
        str(envelope.data.action_id),
        1,
        envelope.id,
    )
    assert (event.data.delivery_status, event.data.to) == ("sent", "+14155550100")
    assert registry.validate_envelope(event.to_jsonable(), topics.SMS_RESULTS) == []

    [row] = await sms.rows(outgoing_sms, command_id)
    assert (row["status"], row["twilio_sid"], row["result"], row["results_published"]) == (
        "accepted",
        request["sid"],
        "sent",
        1,
    )


async def _statuses(sms: Harness, command_id: uuid.UUID) -> bool:
    recorded = await sms.rows(sms_status_callbacks, command_id)
    return {"sent", "delivered"} <= {r["twilio_status"] for r in recorded}


def _signed_headers(sms: Harness, path_and_query: str, params: dict[str, str], token: str) -> dict[str, str]:
    signature = RequestValidator(token).compute_signature(sms.public_url + path_and_query, params)
    return {SIGNATURE_HEADER: signature}


async def test_a_callback_with_a_bad_signature_is_refused_and_publishes_nothing(sms: Harness) -> None:
    command_id, action_id, sid = uuid.uuid4(), uuid.uuid4(), "SM" + uuid.uuid4().hex
    async with sms.service.engine.begin() as conn:  # an SMS Twilio accepted earlier
        await conn.execute(
            insert(outgoing_sms).values(
                command_id=command_id,
                tenant_id="tenant-sms-it",
                action_id=action_id,
                command_message_id=uuid.uuid4(),
                to="+14155550123",
                body="hello",
                status="accepted",
                twilio_sid=sid,
                claimed_at=func.now(),
                attempts=1,
            )
        )
    path = f"/twilio/sms-status?command_id={command_id}"
    params = {"MessageSid": sid, "MessageStatus": "delivered", "AccountSid": sms.stack.twilio_account_sid}

    forged = await sms.http.post(
        path, data=params, headers=_signed_headers(sms, path, params, "not-the-token")
    )
    assert forged.status_code == 403
    assert forged.headers["content-type"].startswith("application/problem+json")
    assert forged.json()["field"] == f"header.{SIGNATURE_HEADER}"
    unsigned = await sms.http.post(path, data=params)
    assert unsigned.status_code == 403
    await asyncio.sleep(1.0)
    assert await sms.rows(sms_status_callbacks, command_id) == []
    assert sms.results.for_command(command_id) == []

    # The same callback signed with the account's token is accepted: the refusal was the signature.
    genuine = await sms.http.post(
        path, data=params, headers=_signed_headers(sms, path, params, sms.stack.twilio_auth_token)
    )
    assert genuine.status_code == 204, genuine.text
    [event] = await eventually(
        lambda: sms.results.for_command(command_id), what="SmsSent after a genuine callback"
    )
    assert (event.type, event.data.message_sid) == ("SmsSent", sid)


@pytest.mark.parametrize(
    ("number", "code", "words"),
    [("+15005550001", 21211, "not a valid phone number"), ("+15005550009", 21614, "not a mobile number")],
)
async def test_a_number_twilio_refuses_is_reported_failed_with_a_readable_reason(
    sms: Harness, number: str, code: int, words: str
) -> None:
    envelope = send_sms(to=number)
    command_id = envelope.data.command_id
    await sms.produce(topics.SMS_COMMANDS, envelope)

    [event] = await eventually(lambda: sms.results.for_command(command_id), what="SmsFailed on sms-results")
    assert isinstance(event.data, SmsFailed)
    assert event.data.error_code == code
    assert words in event.data.reason and str(code) in event.data.reason
    assert event.data.message_sid is None
    assert (event.sequence, event.causation_id, event.tenant) == (1, envelope.id, "tenant-sms-it")
    assert registry.validate_envelope(event.to_jsonable(), topics.SMS_RESULTS) == []
    [request] = await sms.mock_requests(command_id)
    assert request["status"] == 400
    [row] = await sms.rows(outgoing_sms, command_id)
    assert (row["status"], row["result"], row["error_code"]) == ("failed", "failed", code)


async def test_a_request_interrupted_by_a_crash_is_reported_unknown_and_never_resent(sms: Harness) -> None:
    command_id, action_id, message_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with sms.service.engine.begin() as conn:
        # What a process killed during its Twilio request leaves behind: 'sending', no sid, no lock.
        await conn.execute(
            insert(outgoing_sms).values(
                command_id=command_id,
                tenant_id="tenant-sms-it",
                action_id=action_id,
                command_message_id=message_id,
                to="+14155550177",
                body="hello",
                status="sending",
                attempts=1,
                claimed_at=func.now(),
            )
        )

    [event] = await eventually(
        lambda: sms.results.for_command(command_id), what="SmsFailed for the lost request"
    )
    assert isinstance(event.data, SmsFailed)
    assert "unknown" in event.data.reason and "not resent" in event.data.reason
    assert (event.subject, event.causation_id) == (str(action_id), message_id)
    await asyncio.sleep(1.5)  # more recovery passes and dispatch polls: still nothing is sent
    assert await sms.mock_requests(command_id) == []
    [row] = await sms.rows(outgoing_sms, command_id)
    assert (row["status"], row["result"], row["attempts"]) == ("unknown", "unknown", 1)
