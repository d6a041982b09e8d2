"""Encoding and decoding of envelopes, by (type, version)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from manual_actions.contracts.envelope import Envelope, Payload
from manual_actions.contracts.messages import ALL_MESSAGES

PAYLOADS: dict[tuple[str, int], type[Payload]] = {
    (m.message_type, m.message_version): m for m in ALL_MESSAGES
}


class InvalidMessage(Exception):
    """A message that can never be processed; ``reason`` goes to the dead-letter record."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode(raw: bytes | None) -> Envelope[Any]:
    """Parse and validate one message value; raise InvalidMessage naming what is wrong."""
    if raw is None:
        raise InvalidMessage("empty message value (tombstone) on a topic that carries envelopes")
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidMessage(f"not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise InvalidMessage("envelope must be a JSON object")
    key = (document.get("type"), document.get("version"))
    payload_type = PAYLOADS.get(key)  # type: ignore[arg-type]
    if payload_type is None:
        raise InvalidMessage(f"unknown message type/version: {key[0]!r} v{key[1]!r}")
    try:
        return Envelope[payload_type].model_validate(document)  # type: ignore[valid-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise InvalidMessage(f"field {field}: {first['msg']}") from exc


def encode(envelope: Envelope[Any]) -> bytes:
    return envelope.to_json_bytes()
