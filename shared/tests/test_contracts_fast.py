"""``contracts.fast`` (the consumer's derived validator) and ``codec.decode`` (the reference) agree.

For every message type and version of the registry: its examples, and systematically broken or
respelled variants of them (each field removed, each value replaced by values of other types,
UUIDs and datetimes respelled, integers at and past their bounds, unknown enum values, extra
fields, type/version inside the document against the headers, JSON-level oddities). For each
document, with the headers of the type's latest version:

* the fast validator either declines (None) or returns exactly what ``codec.decode`` returns
  (same classes, values, fields set, JSON), and never accepts what the codec refuses;
* ``kafka.decode_record`` returns the codec's envelope, or raises with the codec's reason.

And the fast validator must accept every valid example of a latest version: a derivation that
declined everything would otherwise pass.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from pydantic import BaseModel

from manual_actions.contracts import InvalidMessage, decode, fast, registry
from manual_actions.contracts.codec import PAYLOADS
from manual_actions.contracts.upcasting import UPCASTERS
from manual_actions.kafka import decode_record

LATEST = {t: max(v for tt, v in PAYLOADS if tt == t) for t, _ in PAYLOADS}
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")

# Values of every JSON type (and a few edge values) that each leaf is replaced with in turn.
WRONG_VALUES: list[Any] = [None, True, False, 0, -1, 1.5, 1.0, "", "x", " ", [], {}, ["x"], {"x": 1},
                           2**64, "2025-03-04T15:05:47Z", "c1538459-a346-4bde-9906-478635c9dcd8"]
UUID_SPELLINGS = [
    str.upper, lambda u: u.replace("-", ""), lambda u: "{" + u + "}", lambda u: "urn:uuid:" + u,
    lambda u: u[:-1], lambda u: u[:-1] + "g", lambda u: u + " ", lambda u: " " + u, lambda u: u[:8] + u[9:],
]
DATETIME_SPELLINGS = [
    "2025-03-04T15:05:47Z", "2025-03-04T15:05:47", "2025-03-04T15:05:47+05:30", "2025-03-04T15:05:47+0530",
    "2025-03-04T15:05:47-00:00", "2025-03-04T15:05:47.1Z", "2025-03-04T15:05:47.123456Z",
    "2025-03-04T15:05:47.1234567Z", "2025-03-04T15:05:47.9999999Z", "2025-03-04T15:05:47.123456789+01:00",
    "2025-03-04t15:05:47z", "2025-03-04 15:05:47Z", "2025-03-04T15:05Z", "2025-03-04",
    "2025-03-04T15:05:47,5Z", "2025-02-30T00:00:00Z", "2025-03-04T24:00:00Z", "2025-03-04T23:59:60Z",
    "2025-03-04T15:05:47+24:00", "2025-03-04T15:05:47+23:59", "20250304T150547Z", "1700000000",
    "1700000000.5", 1700000000, 1700000000.5, "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z",
    "2025-03-04T15:05:47 Z", "2025-03-04T15:05:47.Z",
]
INT_VALUES: list[Any] = [0, 1, 2, 3, -1, 100, 101, 2**63, 2**70, 1.0, 2.0, 1e2, "1", "2", "100", True, False,
                         1.5, "0x10", " 1", "1_000"]
STRING_VALUES = [
    "", " ", "a" * 64, "a" * 65, "+13125550164", "+13125550164\n", "\n+13125550164", "+1312555016",
    "+0312555016", "+1312555016" + "\u0664", "sms", "call", "SMS", "Call", "other", "\u00e9t\u00e9",
    "\ud83d\ude00", "x" * 1601, "SM" + "a" * 32, "CA" + "F" * 32, "23:59", "24:00", "24:01", "9:00",
]


def _examples() -> list[tuple[str, int, str, dict[str, Any]]]:
    found = []
    for message_type, version in registry.message_types():
        for name, document in registry.examples_for(message_type, version).items():
            found.append((message_type, version, name, document))
    return found


EXAMPLES = _examples()


def _headers(message_type: str) -> list[tuple[str, bytes]]:
    version = str(LATEST[message_type]).encode()
    return [("type", message_type.encode()), ("version", version), ("tenant", b"t")]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a value in a JSON document (objects' keys and arrays' indexes)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield (*prefix, index)
            yield from _paths(value, (*prefix, index))


def _get(document: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        document = document[step]
    return document


def _replaced(document: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(document)
    _get(changed, path[:-1])[path[-1]] = value
    return changed


def _removed(document: dict[str, Any], path: tuple[Any, ...]) -> dict[str, Any]:
    changed = copy.deepcopy(document)
    parent = _get(changed, path[:-1])
    del parent[path[-1]]
    return changed


def _variants(document: dict[str, Any]) -> Iterator[tuple[str, bytes]]:
    """(label, raw bytes) of the document itself and of its broken or respelled variants."""
    yield "as is", json.dumps(document).encode()
    yield "compact, raw UTF-8", json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
    for path in _paths(document):
        label = "/".join(map(str, path))
        value = _get(document, path)
        yield f"{label} removed", json.dumps(_removed(document, path)).encode()
        candidates: list[Any] = list(WRONG_VALUES)
        if isinstance(value, str) and _UUID.match(value):
            candidates += [spell(value) for spell in UUID_SPELLINGS]
        if isinstance(value, str) and _DATETIME.match(value):
            candidates += DATETIME_SPELLINGS
        if (isinstance(value, int) and not isinstance(value, bool)) or value is None:
            candidates += INT_VALUES
        if isinstance(value, str) or value is None:
            candidates += STRING_VALUES
        if isinstance(value, dict):
            candidates += [{**value, "unexpected": 1}, {**value, "unexpected": None}]
        for candidate in candidates:
            yield f"{label} = {candidate!r}", json.dumps(_replaced(document, path, candidate)).encode()
    yield "extra top-level field", json.dumps({**document, "unexpected": 1}).encode()
    for message_type, version in sorted(PAYLOADS):
        yield (f"type/version {message_type} v{version}",
               json.dumps({**document, "type": message_type, "version": version}).encode())
    text = json.dumps(document)
    yield "escaped", json.dumps(document, ensure_ascii=True).replace("T", "\\u0054").encode()
    yield "duplicate key, last wins", text.replace('"tenant":', '"tenant": "other", "tenant":', 1).encode()
    yield "whitespace around", f"  \n{text}\n ".encode()
    yield "trailing garbage", (text + "x").encode()
    yield "NaN", text.replace('"sequence": 1', '"sequence": NaN', 1).encode()
    yield "lone surrogate", text.replace('"tenant": "', '"tenant": "\\ud800', 1).encode()
    yield "byte order mark", b"\xef\xbb\xbf" + text.encode()
    yield "not UTF-8", text.replace('"tenant": "', '"tenant": "\xff', 1).encode("latin-1")
    yield "not an object", json.dumps([document]).encode()
    yield "null", b"null"


def _same(fast_value: Any, reference: Any, where: str = "envelope") -> None:
    """Same classes, values, fields set and time zones, all the way down."""
    assert type(fast_value) is type(reference), where
    if isinstance(reference, BaseModel):
        assert fast_value.model_fields_set == reference.model_fields_set, where
        for name in type(reference).model_fields:
            _same(getattr(fast_value, name), getattr(reference, name), f"{where}.{name}")
    elif isinstance(reference, list):
        assert len(fast_value) == len(reference), where
        for index, (a, b) in enumerate(zip(fast_value, reference, strict=True)):
            _same(a, b, f"{where}[{index}]")
    elif isinstance(reference, dict):
        assert fast_value.keys() == reference.keys(), where
        for key in reference:
            _same(fast_value[key], reference[key], f"{where}[{key!r}]")
    elif isinstance(reference, datetime):
        assert fast_value == reference and fast_value.utcoffset() == reference.utcoffset(), where
        assert fast_value.isoformat() == reference.isoformat(), where
    else:
        assert fast_value == reference, where


def _check(raw: bytes, header_type: str) -> bool:
    """Assert the agreement; True when the fast validator accepted the document."""
    try:
        reference = decode(raw)
    except InvalidMessage as exc:
        reference, reason = None, exc.reason
    headers = _headers(header_type)
    accepted = fast.fast_decode(raw, headers[0][1], headers[1][1])
    if accepted is not None:
        assert reference is not None, f"the fast validator accepted what the codec refuses: {reason}"
        _same(accepted, reference)
        assert accepted == reference
        assert accepted.to_json_bytes() == reference.to_json_bytes()
    if reference is None:
        with pytest.raises(InvalidMessage) as raised:
            decode_record(raw, headers)
        assert raised.value.reason == reason
    else:
        decoded = decode_record(raw, headers)
        _same(decoded, reference)
    return accepted is not None


@pytest.mark.parametrize(("message_type", "version", "name", "document"), EXAMPLES,
                         ids=[f"{t}-v{v}-{n}" for t, v, n, _ in EXAMPLES])
def test_the_fast_validator_and_the_codec_agree(message_type: str, version: int, name: str,
                                                document: dict[str, Any]) -> None:
    accepted = refused = 0
    for label, raw in _variants(document):
        try:
            took = _check(raw, message_type)
        except AssertionError as exc:
            raise AssertionError(f"{message_type} v{version} {name}, variant {label}: {exc}") from exc
        accepted += took
        refused += not took
    if version == LATEST[message_type]:
        assert _check(json.dumps(document).encode(), message_type), "a valid example must take the fast path"
        assert accepted > 1 and refused > 1
    else:
        # An old version is upcast by the codec; the latest version's validator must decline it.
        assert not _check(json.dumps(document).encode(), message_type)


def test_every_latest_version_has_a_fast_validator() -> None:
    assert set(fast.FAST_VALIDATORS) == {(t.encode(), str(v).encode()) for t, v in LATEST.items()}
    # What lets the fast path skip the codec's upcaster chain: nothing upcasts a latest version.
    assert not [key for key in UPCASTERS if key in set(LATEST.items())]


def test_headers_that_do_not_name_a_latest_version_exactly_are_declined() -> None:
    document = next(e[3] for e in EXAMPLES if e[0] == "ActionQueued" and e[1] == 2)
    raw = json.dumps(document).encode()
    for version in (b"1", b"02", b" 2", b"3", b""):
        assert fast.fast_decode(raw, b"ActionQueued", version) is None
    assert fast.fast_decode(raw, b"ActionDeleted", b"1") is None
    assert fast.fast_decode(raw, b"ActionQueued", b"2") == decode(raw)


def test_a_version_spelled_as_anything_but_the_integer_is_declined_as_the_codec_refuses_it() -> None:
    _, _, _, document = next(e for e in EXAMPLES if e[0] == "ActionQueued" and e[1] == 2)
    for spelled in (2.0, "2", True, [2]):
        raw = json.dumps({**document, "version": spelled}).encode()
        assert fast.fast_decode(raw, b"ActionQueued", b"2") is None
        with pytest.raises(InvalidMessage) as raised:
            decode(raw)
        assert raised.value.reason.startswith("field version:")


def test_an_envelope_validator_the_derivation_does_not_know_makes_it_decline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast, "_ENVELOPE_VALIDATOR", "some_other_validator")
    with pytest.raises(fast.Unsupported):
        fast.derive_schema(PAYLOADS[("ActionQueued", 2)])
