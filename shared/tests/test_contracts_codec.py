"""decode() rejects bad input with a reason naming the field; validate_envelope() agrees."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

import pytest

from manual_actions.contracts import (
    ActionQueued,
    Envelope,
    InvalidMessage,
    SendSms,
    decode,
    decode_document,
    encode,
    registry,
    topics,
)


def example(message_type: str, name: str) -> dict[str, Any]:
    return copy.deepcopy(registry.examples_for(message_type, 1)[name])


def raw(document: Any) -> bytes:
    return json.dumps(document).encode()


def reason_of(value: bytes | None) -> str:
    with pytest.raises(InvalidMessage) as caught:
        decode(value)
    return caught.value.reason


def test_not_json() -> None:
    assert reason_of(b"{not json").startswith("not JSON")
    assert reason_of(b"\xff\xfe").startswith("not JSON")


def test_json_that_is_not_an_object() -> None:
    assert "JSON object" in reason_of(b"[1, 2]")


def test_tombstone() -> None:
    assert "tombstone" in reason_of(None)


def test_unknown_type_names_the_type_field() -> None:
    document = example("SendSms", "quote-ready")
    document["type"] = "SendFax"
    reason = reason_of(raw(document))
    assert reason.startswith("field type:") and "SendFax" in reason


def test_unknown_version_names_the_type_field() -> None:
    document = example("SendSms", "quote-ready")
    document["version"] = 7
    assert reason_of(raw(document)).startswith("field type: unknown message type/version: 'SendSms' v7")


def test_version_must_be_an_integer() -> None:
    document = example("SendSms", "quote-ready")
    document["version"] = "1"
    assert reason_of(raw(document)).startswith("field version:")


def test_missing_payload_field_is_named() -> None:
    document = example("SendSms", "quote-ready")
    del document["data"]["body"]
    assert reason_of(raw(document)) == "field data.body: Field required"


def test_missing_envelope_field_is_named() -> None:
    document = example("ActionQueued", "sms")
    del document["tenant"]
    assert reason_of(raw(document)) == "field tenant: Field required"


@pytest.mark.parametrize("field", ["id", "time"])
def test_id_and_time_are_required_on_the_wire(field: str) -> None:
    # the model has defaults for them, but a message without its own id could not be deduplicated
    document = example("SmsSent", "delivered")
    del document[field]
    assert reason_of(raw(document)) == f"field {field}: Field required"
    errors = registry.validate_envelope(document)
    assert any(f"'{field}' is a required property" in e for e in errors)


@pytest.mark.parametrize("bad_phone", ["4155550123", "+0155550123", "+1 415 555 0123", "(415) 555-0123"])
def test_wrong_phone_format_is_named(bad_phone: str) -> None:
    document = example("SendSms", "quote-ready")
    document["data"]["to"] = bad_phone
    assert reason_of(raw(document)).startswith("field data.to: String should match pattern")
    assert any(e.startswith("data.to:") for e in registry.validate_envelope(document))


def test_wrong_contact_phone_is_named_with_its_path() -> None:
    document = example("ActionQueued", "sms")
    document["data"]["contact"]["phone"] = "555-0123"
    assert reason_of(raw(document)).startswith("field data.contact.phone:")
    assert any(e.startswith("data.contact.phone:") for e in registry.validate_envelope(document))


def test_unknown_payload_field_is_rejected() -> None:
    document = example("PlaceCall", "hot-lead")
    document["data"]["record"] = True
    assert reason_of(raw(document)).startswith("field data.record: Extra inputs are not permitted")
    assert any(e.startswith("data:") and "record" in e for e in registry.validate_envelope(document))


def test_bad_twilio_sid_is_named() -> None:
    document = example("CallCompleted", "completed")
    document["data"]["call_sid"] = "SM" + "0" * 32
    assert reason_of(raw(document)).startswith("field data.call_sid:")


def test_several_errors_are_listed_but_bounded() -> None:
    document = example("SendSms", "quote-ready")
    document["data"] = {}
    reason = reason_of(raw(document))
    assert reason.count("field data.") == 3 and reason.endswith("and 2 more")


def test_decode_document_accepts_a_parsed_document() -> None:
    envelope = decode_document(example("ActionQueued", "call"))
    assert isinstance(envelope.data, ActionQueued)
    assert envelope.data.contact.name == "Dwayne Carter"


def test_wrap_encode_decode_round_trip() -> None:
    action_id = uuid.uuid4()
    envelope = Envelope.wrap(
        SendSms(
            command_id=uuid.uuid4(),
            action_id=action_id,
            to="+447700900123",
            body="Hi Sam, your appointment is confirmed for 3pm.",
            requested_by=None,
        ),
        source="action-queue",
        tenant="acme-roofing",
        subject=str(action_id),
        sequence=4,
    )
    decoded = decode(encode(envelope))
    assert decoded == envelope
    assert registry.validate_envelope(json.loads(encode(envelope)), topics.SMS_COMMANDS) == []


def test_envelope_type_must_match_its_payload() -> None:
    document = example("SendSms", "quote-ready")
    document["type"] = "PlaceCall"
    with pytest.raises(ValueError, match="do not match the payload"):
        Envelope[SendSms].model_validate(document)


# --- validate_envelope: the registry's own checks ---------------------------------------------


def test_validate_envelope_accepts_an_example() -> None:
    assert registry.validate_envelope(example("SmsFailed", "opted-out")) == []


def test_validate_envelope_rejects_a_subject_that_is_not_the_action_id() -> None:
    document = example("SmsSent", "delivered")
    document["subject"] = document["data"]["command_id"]
    errors = registry.validate_envelope(document)
    assert len(errors) == 1 and errors[0].startswith("subject: must equal data.action_id")


def test_validate_envelope_rejects_a_message_on_the_wrong_topic() -> None:
    errors = registry.validate_envelope(example("SendSms", "quote-ready"), topics.CALL_COMMANDS)
    assert errors == ["type: SendSms v1 is not carried by manual-actions.call-commands"]


def test_validate_envelope_checks_formats() -> None:
    document = example("ActionDeleted", "created-by-mistake")
    document["time"] = "2025-03-04 16:40"
    document["id"] = "not-a-uuid"
    document["data"]["deleted_at"] = "2025-02-30T10:00:00Z"
    errors = registry.validate_envelope(document)
    assert [e.split(":")[0] for e in errors] == ["data.deleted_at", "id", "time"]


def test_validate_envelope_rejects_a_naive_time() -> None:
    document = example("ActionDeleted", "created-by-mistake")
    document["time"] = "2025-03-04T16:40:05"
    assert registry.validate_envelope(document) == ["time: '2025-03-04T16:40:05' is not a 'date-time'"]


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ([1], "(envelope): must be a JSON object"),
        ({"type": "Nope", "version": 1}, "type: unknown message type/version 'Nope' v1"),
        ({"type": "SendSms"}, "type: no schema for type 'SendSms' version None"),
    ],
)
def test_validate_envelope_unknown_shapes(document: Any, expected: str) -> None:
    assert registry.validate_envelope(document) == [expected]
