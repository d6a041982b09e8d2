"""Encoding and decoding of envelopes, by (type, version).

``decode`` is the only way consumers turn message bytes into envelopes. It either returns a
fully validated ``Envelope[<payload class>]`` or raises ``InvalidMessage`` whose ``reason``
names the offending field (that reason becomes the ``dlq.reason`` header of the dead letter).
Old payload versions are upcast to the latest one first (see ``upcasting.py``).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from manual_actions.contracts.envelope import WIRE_REQUIRED_FIELDS, Envelope, Payload
from manual_actions.contracts.messages import ALL_MESSAGES
from manual_actions.contracts.upcasting import UpcastError, upcast

PAYLOADS: dict[tuple[str, int], type[Payload]] = {
    (m.message_type, m.message_version): m for m in ALL_MESSAGES
}

# How many validation errors a reason lists; dead-letter headers should stay short.
_MAX_ERRORS_IN_REASON = 3


class InvalidMessage(Exception):
    """A message that can never be processed; ``reason`` goes to the dead-letter record."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode(raw: bytes | None, *, upcast_to_latest: bool = True) -> Envelope[Any]:
    """Parse and validate one message value; raise InvalidMessage naming what is wrong.

    With ``upcast_to_latest`` (the default) an old payload version is upcast through the
    registered chain first, so the result carries the latest payload class of its type.
    """
    if raw is None:
        raise InvalidMessage("empty message value (tombstone) on a topic that carries envelopes")
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidMessage(f"not JSON: {exc}") from exc
    return decode_document(document, upcast_to_latest=upcast_to_latest)


def decode_document(document: Any, *, upcast_to_latest: bool = True) -> Envelope[Any]:
    """Like ``decode`` for an already parsed JSON document (e.g. an outbox row's jsonb value)."""
    if not isinstance(document, dict):
        raise InvalidMessage("envelope must be a JSON object")
    message_type = document.get("type")
    version = document.get("version")
    if not isinstance(message_type, str):
        raise InvalidMessage(f"field type: must be a string naming the payload type, got {message_type!r}")
    if not isinstance(version, int) or isinstance(version, bool):
        raise InvalidMessage(f"field version: must be an integer, got {version!r}")
    for name in WIRE_REQUIRED_FIELDS:
        if name not in document:
            raise InvalidMessage(f"field {name}: Field required")
    data = document.get("data")
    if upcast_to_latest and isinstance(data, dict):
        try:
            latest, upcasted = upcast(message_type, version, data)
        except UpcastError as exc:
            raise InvalidMessage(f"field data: {exc}") from exc
        if latest != version:
            document = {**document, "version": latest, "data": upcasted}
            version = latest
    payload_type = PAYLOADS.get((message_type, version))
    if payload_type is None:
        raise InvalidMessage(f"field type: unknown message type/version: {message_type!r} v{version!r}")
    try:
        return Envelope[payload_type].model_validate(document)
    except ValidationError as exc:
        raise InvalidMessage(_reason(exc)) from exc


def _reason(exc: ValidationError) -> str:
    parts = []
    errors = exc.errors()
    for error in errors[:_MAX_ERRORS_IN_REASON]:
        field = ".".join(str(p) for p in error["loc"]) or "envelope"
        parts.append(f"field {field}: {error['msg']}")
    if len(errors) > _MAX_ERRORS_IN_REASON:
        parts.append(f"and {len(errors) - _MAX_ERRORS_IN_REASON} more")
    return "; ".join(parts)


def encode(envelope: Envelope[Any]) -> bytes:
    """The message value: the envelope as compact UTF-8 JSON."""
    return envelope.to_json_bytes()
