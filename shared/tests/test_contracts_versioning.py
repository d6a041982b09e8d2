"""Upcasting: decode() turns old payload versions into the latest through registered steps.

Production has only v1 of every type, so the mechanism is tested with a fake type that exists
only in this module and is removed again after each test.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from manual_actions.contracts import InvalidMessage, Payload, codec, decode, upcaster, upcasting
from manual_actions.contracts.messages import ALL_MESSAGES

FAKE = "TestParcelScanned"


class ParcelScannedV2(Payload):
    message_type: ClassVar[str] = FAKE
    message_version: ClassVar[int] = 2
    action_id: uuid.UUID
    depot: str
    weight_grams: int


class ParcelScannedV3(Payload):
    message_type: ClassVar[str] = FAKE
    message_version: ClassVar[int] = 3
    action_id: uuid.UUID
    depot_code: str
    weight_grams: int
    fragile: bool


@pytest.fixture
def fake_type(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """v1 exists only as old data; v2 still has a class (producers mid-upgrade); v3 is latest."""
    monkeypatch.setitem(codec.PAYLOADS, (FAKE, 2), ParcelScannedV2)
    monkeypatch.setitem(codec.PAYLOADS, (FAKE, 3), ParcelScannedV3)

    @upcaster(FAKE, from_version=1)
    def v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
        # v1 weighed in kilograms
        kilograms = data["weight_kg"]
        rest = {k: v for k, v in data.items() if k != "weight_kg"}
        return {**rest, "weight_grams": round(kilograms * 1000)}

    @upcaster(FAKE, from_version=2)
    def v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
        rest = {k: v for k, v in data.items() if k != "depot"}
        return {**rest, "depot_code": data["depot"].upper(), "fragile": False}

    yield
    upcasting.remove_upcaster(FAKE, from_version=1)
    upcasting.remove_upcaster(FAKE, from_version=2)
    assert not [key for key in upcasting.UPCASTERS if key[0] == FAKE]


def message(version: int, data: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "id": "5b0e8c5e-8a43-4a0e-9d1c-0f6f1d5d2a11",
            "type": FAKE,
            "version": version,
            "source": "test",
            "time": "2025-03-04T10:00:00Z",
            "tenant": "acme-roofing",
            "subject": "c1538459-a346-4bde-9906-478635c9dcd8",
            "sequence": 7,
            "causation_id": None,
            "data": data,
        }
    ).encode()


ACTION = "c1538459-a346-4bde-9906-478635c9dcd8"


@pytest.mark.usefixtures("fake_type")
def test_v1_is_upcast_through_the_whole_chain() -> None:
    envelope = decode(message(1, {"action_id": ACTION, "depot": "lhr-2", "weight_kg": 1.25}))
    assert envelope.version == 3
    assert envelope.data == ParcelScannedV3(
        action_id=uuid.UUID(ACTION), depot_code="LHR-2", weight_grams=1250, fragile=False
    )
    # the envelope keeps its identity: dedupe and ordering still work on upcast messages
    assert str(envelope.id) == "5b0e8c5e-8a43-4a0e-9d1c-0f6f1d5d2a11"
    assert (envelope.sequence, envelope.subject, envelope.tenant) == (7, ACTION, "acme-roofing")


@pytest.mark.usefixtures("fake_type")
def test_v2_is_upcast_even_though_its_class_still_exists() -> None:
    envelope = decode(message(2, {"action_id": ACTION, "depot": "man-1", "weight_grams": 300}))
    assert isinstance(envelope.data, ParcelScannedV3)
    assert envelope.data.depot_code == "MAN-1"


@pytest.mark.usefixtures("fake_type")
def test_latest_version_is_decoded_as_is() -> None:
    data = {"action_id": ACTION, "depot_code": "EDI-4", "weight_grams": 10, "fragile": True}
    envelope = decode(message(3, data))
    assert envelope.version == 3 and envelope.data.fragile is True


@pytest.mark.usefixtures("fake_type")
def test_without_upcasting_old_versions_decode_as_their_own_class_or_not_at_all() -> None:
    envelope = decode(
        message(2, {"action_id": ACTION, "depot": "man-1", "weight_grams": 300}), upcast_to_latest=False
    )
    assert isinstance(envelope.data, ParcelScannedV2)
    with pytest.raises(InvalidMessage, match="unknown message type/version"):
        decode(message(1, {"action_id": ACTION, "depot": "x", "weight_kg": 1}), upcast_to_latest=False)


@pytest.mark.usefixtures("fake_type")
def test_a_failing_upcaster_makes_the_message_invalid_naming_the_step() -> None:
    with pytest.raises(InvalidMessage) as caught:
        decode(message(1, {"action_id": ACTION, "depot": "lhr-2"}))  # no weight_kg
    assert caught.value.reason.startswith(f"field data: upcasting {FAKE} v1 to v2 failed")
    assert "weight_kg" in caught.value.reason


@pytest.mark.usefixtures("fake_type")
def test_upcast_result_is_still_validated() -> None:
    with pytest.raises(InvalidMessage, match=r"field data.weight_grams"):
        decode(message(2, {"action_id": ACTION, "depot": "lhr", "weight_grams": "heavy"}))


@pytest.mark.usefixtures("fake_type")
def test_a_second_upcaster_for_the_same_step_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        upcaster(FAKE, from_version=1)(lambda data: data)


def test_an_upcaster_must_return_an_object() -> None:
    upcaster(FAKE, from_version=5)(lambda data: None)  # type: ignore[arg-type,return-value]
    try:
        with pytest.raises(upcasting.UpcastError, match="returned NoneType"):
            upcasting.upcast(FAKE, 5, {})
    finally:
        upcasting.remove_upcaster(FAKE, from_version=5)


def test_from_version_must_be_positive() -> None:
    with pytest.raises(ValueError):
        upcaster(FAKE, from_version=0)


def test_every_production_upcaster_chain_ends_at_a_payload_class() -> None:
    for message_type, version in list(upcasting.UPCASTERS):
        latest = version + 1
        while (message_type, latest) in upcasting.UPCASTERS:
            latest += 1
        assert (message_type, latest) in codec.PAYLOADS, (message_type, version)


def test_every_version_after_the_first_has_an_upcaster_from_the_one_before() -> None:
    latest: dict[str, int] = {}
    for message in ALL_MESSAGES:
        latest[message.message_type] = max(latest.get(message.message_type, 0), message.message_version)
    for message_type, version in latest.items():
        for older in range(1, version):
            assert (message_type, older) in upcasting.UPCASTERS, (message_type, older)
        assert (message_type, version) not in upcasting.UPCASTERS, "the latest version is not upcast"
