"""``kafka.decode_record`` (the consumer's fast path) gives exactly what ``contracts.decode`` gives:
the same envelope for every valid message, the same InvalidMessage reason for every invalid one,
whatever the headers claim."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from manual_actions.contracts import (
    ActionQueued,
    ActionType,
    ContactSnapshot,
    Envelope,
    InvalidMessage,
    decode,
)
from manual_actions.kafka import decode_record


def _queued_envelope() -> Envelope[ActionQueued]:
    payload = ActionQueued(
        action_id=uuid.uuid4(), action_type=ActionType.SMS, action_name="Follow up", workflow_id=uuid.uuid4(),
        workflow_version=1, workflow_name="Leads", step_id="sms1", enrollment_id=uuid.uuid4(),
        contact=ContactSnapshot(contact_id=uuid.uuid4(), name="Ada", phone="+14155550100"),
        assignee_user_id=uuid.uuid4(), message="Hi", queued_at=datetime(2025, 1, 6, tzinfo=UTC))
    return Envelope.wrap(payload, source="workflow-runner", tenant="acme", subject=str(payload.action_id),
                         sequence=1)


def _headers(message_type: str, version: str) -> list[tuple[str, bytes]]:
    return [("type", message_type.encode()), ("version", version.encode()), ("tenant", b"acme")]


def _reason(value: bytes, headers: list[tuple[str, bytes]] | None) -> str:
    with pytest.raises(InvalidMessage) as raised:
        decode_record(value, headers)
    return raised.value.reason


def _expected_reason(value: bytes) -> str:
    with pytest.raises(InvalidMessage) as raised:
        decode(value)
    return raised.value.reason


def test_a_valid_message_decodes_to_the_same_envelope_with_or_without_headers() -> None:
    envelope = _queued_envelope()
    value = envelope.to_json_bytes()
    for headers in (envelope.kafka_headers(), None, [], _headers("ActionQueued", "x"),
                    _headers("ActionQueued", "02"), [("version", b"2")], [("type", b"ActionQueued")]):
        decoded = decode_record(value, headers)
        assert decoded == decode(value) == envelope
        assert type(decoded.data) is ActionQueued


@pytest.mark.parametrize("field", ["id", "time"])
def test_a_wire_field_with_a_python_default_is_still_required(field: str) -> None:
    document = json.loads(_queued_envelope().to_json_bytes())
    del document[field]
    value = json.dumps(document).encode()
    expected = f"field {field}: Field required"
    assert _reason(value, _headers("ActionQueued", "2")) == _expected_reason(value) == expected


def _mutated(change: Any) -> bytes:
    document = json.loads(_queued_envelope().to_json_bytes())
    change(document)
    return json.dumps(document).encode()


@pytest.mark.parametrize("value", [
    _mutated(lambda d: d["data"].update(priority=500)),
    _mutated(lambda d: d.update(type="ActionDeleted")),
    b"not json",
    b"[]",
], ids=["bad field", "type disagrees", "not json", "not an object"])
def test_an_invalid_message_gets_the_codecs_reason_whatever_the_headers_say(value: bytes) -> None:
    expected = _expected_reason(value)
    assert _reason(value, _headers("ActionQueued", "2")) == expected
    assert _reason(value, None) == expected


def test_an_old_version_is_upcast_as_decode_does_even_if_the_headers_claim_the_latest() -> None:
    document = json.loads(_queued_envelope().to_json_bytes())
    document["version"] = 1
    for name in ("due_at", "message_template"):
        document["data"].pop(name, None)
    value = json.dumps(document).encode()
    expected = decode(value)
    assert expected.version == 2
    assert decode_record(value, _headers("ActionQueued", "2")) == expected
    assert decode_record(value, _headers("ActionQueued", "1")) == expected


def test_headers_naming_another_type_fall_back_to_the_codec() -> None:
    envelope = _queued_envelope()
    value = envelope.to_json_bytes()
    assert decode_record(value, _headers("ActionDeleted", "1")) == envelope
    assert _reason(None, _headers("ActionQueued", "2")) == _expected_reason_none()


def _expected_reason_none() -> str:
    with pytest.raises(InvalidMessage) as raised:
        decode(None)
    return raised.value.reason
