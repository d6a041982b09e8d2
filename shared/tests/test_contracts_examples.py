"""Every example envelope validates against its JSON Schema and decodes with the codec."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from manual_actions.contracts import decode, encode, registry
from manual_actions.contracts.messages import ALL_MESSAGES

E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
EXAMPLES = [
    pytest.param(message_type, version, name, document, id=f"{message_type}-v{version}-{name}")
    for message_type, version in registry.message_types()
    for name, document in registry.examples_for(message_type, version).items()
]


def test_every_payload_class_has_at_least_one_example() -> None:
    for payload in ALL_MESSAGES:
        assert registry.examples_for(payload.message_type, payload.message_version), payload.message_type


@pytest.mark.parametrize(("message_type", "version", "name", "document"), EXAMPLES)
def test_example_validates_against_its_json_schema(
    message_type: str, version: int, name: str, document: dict[str, Any]
) -> None:
    schema = registry.schema_for(message_type, version)
    validator = Draft202012Validator(schema, format_checker=registry.FORMAT_CHECKER)
    assert [e.message for e in validator.iter_errors(document)] == []
    for topic_name in registry.topic_for_message(message_type):
        assert registry.validate_envelope(document, topic_name) == []


@pytest.mark.parametrize(("message_type", "version", "name", "document"), EXAMPLES)
def test_example_decodes_and_round_trips(
    message_type: str, version: int, name: str, document: dict[str, Any]
) -> None:
    envelope = decode(json.dumps(document).encode(), upcast_to_latest=False)
    assert (envelope.type, envelope.version) == (message_type, version)
    assert type(envelope.data).message_type == message_type
    # examples are exactly what a producer writes: re-encoding gives the same document back
    assert json.loads(encode(envelope)) == document


@pytest.mark.parametrize(("message_type", "version", "name", "document"), EXAMPLES)
def test_example_of_an_old_version_upcasts_to_the_latest(
    message_type: str, version: int, name: str, document: dict[str, Any]
) -> None:
    latest = max(v for t, v in registry.message_types() if t == message_type)
    envelope = decode(json.dumps(document).encode())
    assert envelope.version == latest
    assert (envelope.id, envelope.subject, envelope.tenant) == (
        uuid.UUID(document["id"]),
        document["subject"],
        document["tenant"],
    )
    upcast_fields = set(type(envelope.data).model_fields)
    assert set(document["data"]) <= upcast_fields
    for field, value in document["data"].items():
        assert json.loads(envelope.data.model_dump_json())[field] == value, field


@pytest.mark.parametrize(("message_type", "version", "name", "document"), EXAMPLES)
def test_example_is_realistic(message_type: str, version: int, name: str, document: dict[str, Any]) -> None:
    assert document["tenant"]
    assert document["sequence"] >= 1
    (topic_name,) = registry.topic_for_message(message_type)
    key_field = registry.topic(topic_name).key.payload_field
    assert document["subject"] == document["data"][key_field], f"the Kafka key is data.{key_field}"
    data = document["data"]
    for field in ("to", "agent_phone"):
        if field in data:
            assert E164.match(data[field]), field
    if "contact" in data and data["contact"]["phone"] is not None:
        assert E164.match(data["contact"]["phone"])
    for text in (data.get("message"), data.get("body")):
        if text is not None:
            assert "{{" not in text and "}}" not in text, "merge fields are rendered before queueing"
