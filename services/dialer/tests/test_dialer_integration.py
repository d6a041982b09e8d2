"""The dialer against the real Kafka, PostgreSQL and Twilio contract mock: the call request passes
Twilio's contract (Prism), the answered agent is bridged to the contact by TwiML, and the call's
end is reported once with Twilio's final status and duration."""

from __future__ import annotations

import asyncio
import uuid
import xml.etree.ElementTree as ET

import pytest
from twilio.request_validator import RequestValidator
from twilio_harness import Harness, eventually

from dialer.adapters.tables import call_status_callbacks, outgoing_calls
from manual_actions.contracts import CallCompleted, Envelope, PlaceCall, registry, topics
from manual_actions.twilio_support import SIGNATURE_HEADER

pytestmark = pytest.mark.integration

CONTACT = "+14155550142"


def place_call(agent_phone: str = "+14155550199", to: str = CONTACT) -> Envelope[PlaceCall]:
    command = PlaceCall(
        command_id=uuid.uuid4(),
        action_id=uuid.uuid4(),
        to=to,
        agent_phone=agent_phone,
        requested_by=uuid.uuid4(),
    )
    return Envelope.wrap(
        command, source="action-queue", tenant="tenant-dialer-it", subject=str(command.action_id), sequence=1
    )


def signed(
    dialer: Harness, path_and_query: str, params: dict[str, str], token: str | None = None
) -> dict[str, str]:
    validator = RequestValidator(token or dialer.stack.twilio_auth_token)
    return {SIGNATURE_HEADER: validator.compute_signature(dialer.public_url + path_and_query, params)}


async def test_a_call_rings_the_agent_bridges_the_contact_and_reports_completed_once(dialer: Harness) -> None:
    envelope = place_call()
    command_id = envelope.data.command_id
    await dialer.produce(topics.CALL_COMMANDS, envelope)
    await dialer.produce(topics.CALL_COMMANDS, envelope)  # a redelivery places no second call

    [event] = await eventually(lambda: dialer.results.for_command(command_id), what="CallCompleted")
    [request] = await dialer.mock_requests(command_id)
    assert request["status"] == 201, request  # Prism accepted the form, StatusCallbackEvent included
    params = request["params"]
    assert (params["To"], params["From"]) == ("+14155550199", "+15005550006")
    assert params["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
    assert params["StatusCallbackMethod"] == "POST"
    assert params["Url"] == f"{dialer.public_url}/twilio/voice/connect?command_id={command_id}"

    assert isinstance(event.data, CallCompleted)
    assert (event.data.call_status, event.data.duration_seconds, event.data.call_sid) == (
        "completed",
        5,
        request["sid"],
    )
    assert (event.source, event.subject, event.sequence, event.causation_id, event.tenant) == (
        "dialer",
        str(envelope.data.action_id),
        1,
        envelope.id,
        "tenant-dialer-it",
    )
    assert registry.validate_envelope(event.to_jsonable(), topics.CALL_RESULTS) == []
    recorded = [r["twilio_status"] for r in await dialer.rows(call_status_callbacks, command_id)]
    assert sorted(recorded) == sorted(["initiated", "ringing", "in-progress", "completed"])

    # When the agent answers, Twilio fetches the TwiML that dials the contact.
    path = f"/twilio/voice/connect?command_id={command_id}"
    answer = {
        "CallSid": request["sid"],
        "CallStatus": "in-progress",
        "AccountSid": dialer.stack.twilio_account_sid,
    }
    response = await dialer.http.post(path, data=answer, headers=signed(dialer, path, answer))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/xml")
    dial = ET.fromstring(response.text).find("Dial")
    assert dial is not None and dial.text == CONTACT and dial.get("callerId") == "+15005550006"
    [row] = await dialer.rows(outgoing_calls, command_id)
    assert row["connected_at"] is not None and row["result"] == "reported"

    await asyncio.sleep(0.5)
    assert len(dialer.results.for_command(command_id)) == 1
    assert len(await dialer.mock_requests(command_id)) == 1


@pytest.mark.parametrize(("agent_phone", "status"), [("+14155550002", "busy"), ("+14155550003", "no-answer")])
async def test_an_agent_line_that_does_not_answer_is_reported_with_twilios_status(
    dialer: Harness, agent_phone: str, status: str
) -> None:
    envelope = place_call(agent_phone=agent_phone)
    await dialer.produce(topics.CALL_COMMANDS, envelope)
    [event] = await eventually(
        lambda: dialer.results.for_command(envelope.data.command_id), what="CallCompleted"
    )
    assert (event.data.call_status, event.data.duration_seconds) == (status, 0)


async def test_an_invalid_number_is_reported_as_a_failed_call(dialer: Harness) -> None:
    envelope = place_call(agent_phone="+15005550001")
    await dialer.produce(topics.CALL_COMMANDS, envelope)
    [event] = await eventually(
        lambda: dialer.results.for_command(envelope.data.command_id), what="CallCompleted"
    )
    assert (event.data.call_status, event.data.call_sid) == ("failed", None)
    assert registry.validate_envelope(event.to_jsonable(), topics.CALL_RESULTS) == []
    [row] = await dialer.rows(outgoing_calls, envelope.data.command_id)
    assert row["status"] == "failed"
    assert "Twilio error 21217" in row["last_error"] and "not a valid phone number" in row["last_error"]


async def test_voice_webhooks_refuse_a_bad_signature(dialer: Harness) -> None:
    envelope = place_call()
    command_id = envelope.data.command_id
    await dialer.produce(topics.CALL_COMMANDS, envelope)
    await eventually(lambda: dialer.results.for_command(command_id), what="CallCompleted")
    for path in (
        f"/twilio/call-status?command_id={command_id}",
        f"/twilio/voice/connect?command_id={command_id}",
    ):
        params = {"CallSid": "CA" + uuid.uuid4().hex, "CallStatus": "completed", "CallDuration": "60"}
        response = await dialer.http.post(
            path, data=params, headers=signed(dialer, path, params, token="wrong")
        )
        assert response.status_code == 403, path
        assert response.json()["field"] == f"header.{SIGNATURE_HEADER}"
    await asyncio.sleep(0.5)
    assert len(dialer.results.for_command(command_id)) == 1
    [row] = await dialer.rows(outgoing_calls, command_id)
    assert row["connected_at"] is None and row["duration_seconds"] == 5


async def test_twiml_for_an_unknown_call_hangs_up_politely(dialer: Harness) -> None:
    path = f"/twilio/voice/connect?command_id={uuid.uuid4()}"
    params = {"CallSid": "CA" + uuid.uuid4().hex, "CallStatus": "in-progress"}
    response = await dialer.http.post(path, data=params, headers=signed(dialer, path, params))
    assert response.status_code == 200
    root = ET.fromstring(response.text)
    assert root.find("Dial") is None and root.find("Hangup") is not None


async def test_the_shared_wiring_gives_the_dialer_no_own_loop_and_never_opens_the_identity_store(
    dialer: Harness,
) -> None:
    # The dialer's SPEC adds no loop; the identity store is handed to its router but no route
    # needs it, and the store connects on first use only: no pool connection was ever opened.
    assert dialer.service.loops == []
    assert len(dialer.service.background) == 3  # outbox relay, commands consumer, dispatcher
    assert dialer.service.app.state.identity is dialer.service.identity
    assert dialer.service.identity.engine.sync_engine.pool.checkedin() == 0
