"""The envelope every event and command travels in.

Contract: ``id`` is unique per message and is what consumers deduplicate on; ``subject`` is the
entity the message is about (also the Kafka key, so one entity's messages stay in order);
``sequence`` increases by one for each message about the same subject on the same topic (on
action-lifecycle gaplessly across writers: ActionQueued is 1, action-queue continues from there);
``tenant`` is always set. ``data`` holds the typed payload named by ``type`` and ``version``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, Self, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Payload(BaseModel):
    """Base of every event and command payload: immutable, unknown fields rejected.

    Subclasses set ``message_type`` (past tense for events, imperative for commands),
    ``message_version`` and ``kind``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    message_type: ClassVar[str]
    message_version: ClassVar[int] = 1
    kind: ClassVar[str] = "event"


P = TypeVar("P", bound=Payload)

#: Envelope fields that have a default in Python (so ``Envelope.wrap`` can fill them) but that
#: every message on the wire must carry: a message without its own ``id`` could not be
#: deduplicated, and ``time`` is the fact's time, not the reader's. ``codec.decode`` rejects
#: documents without them and the generated JSON Schemas list them as required.
WIRE_REQUIRED_FIELDS: tuple[str, ...] = ("id", "time")


def utcnow() -> datetime:
    return datetime.now(UTC)


def payload_class_of(envelope_class: type[BaseModel]) -> type[Payload] | None:
    """The payload class an ``Envelope[X]`` is parametrised with, or None for ``Envelope[Any]``."""
    field = envelope_class.model_fields.get("data")
    annotation = field.annotation if field is not None else None
    if isinstance(annotation, type) and issubclass(annotation, Payload):
        return annotation
    return None


def _envelope_json_schema_extra(schema: dict[str, Any], envelope_class: type[Any]) -> None:
    """Make the JSON Schema of ``Envelope[X]`` describe exactly the wire form of X's messages.

    Pydantic alone would leave ``id``/``time`` optional (they have defaults) and allow any
    ``type``/``version``; the codec dispatches on that pair, so the schema pins it.
    """
    required = schema.setdefault("required", [])
    for name in WIRE_REQUIRED_FIELDS:
        if name not in required:
            required.append(name)
    order = list(envelope_class.model_fields)
    required.sort(key=lambda name: order.index(name) if name in order else len(order))
    payload = payload_class_of(envelope_class)
    if payload is None:
        return
    properties = schema.get("properties", {})
    if "type" in properties:
        properties["type"]["const"] = payload.message_type
    if "version" in properties:
        properties["version"]["const"] = payload.message_version
    schema["title"] = f"{payload.message_type} v{payload.message_version}"


class Envelope(BaseModel, Generic[P]):
    """A message on the wire: metadata plus one typed payload."""

    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_extra=_envelope_json_schema_extra)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, description="Unique message id; dedupe key.")
    type: str = Field(description="Payload type, e.g. ActionQueued.")
    version: int = Field(ge=1, description="Payload schema version.")
    source: str = Field(min_length=1, description="Producing service, e.g. workflow-runner.")
    time: datetime = Field(default_factory=utcnow, description="When the fact happened (UTC).")
    tenant: str = Field(min_length=1, max_length=64, description="Owning tenant id.")
    subject: str = Field(
        min_length=1,
        description="Entity the message is about (action, contact or user id); also the Kafka key.",
    )
    sequence: int = Field(
        ge=1,
        description="Numbers the messages about one subject on one topic: 1, 2, 3, ... in write order.",
    )
    causation_id: uuid.UUID | None = Field(
        default=None, description="Id of the message that caused this one, if a message did."
    )
    data: P

    @model_validator(mode="after")
    def _type_and_version_name_the_payload(self) -> Self:
        """``type``/``version`` must name the payload class they carry (consumers dispatch on them)."""
        data = self.data
        if isinstance(data, Payload):
            expected = (data.message_type, data.message_version)
            if (self.type, self.version) != expected:
                raise ValueError(
                    f"type/version {self.type!r} v{self.version} do not match the payload "
                    f"{expected[0]!r} v{expected[1]}"
                )
        return self

    @classmethod
    def wrap(
        cls,
        payload: P,
        *,
        source: str,
        tenant: str,
        subject: str,
        sequence: int,
        causation_id: uuid.UUID | None = None,
        time: datetime | None = None,
    ) -> Envelope[P]:
        """Build the envelope for ``payload``, copying its type and version."""
        # Parametrise with the payload's own class so the envelope validates and serialises
        # exactly that payload (mypy cannot follow a runtime type as a type argument).
        envelope_class: Any = cast(Any, Envelope)[type(payload)]
        return envelope_class(
            type=payload.message_type,
            version=payload.message_version,
            source=source,
            tenant=tenant,
            subject=subject,
            sequence=sequence,
            causation_id=causation_id,
            time=time or utcnow(),
            data=payload,
        )

    def to_json_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    def to_jsonable(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def kafka_headers(self) -> list[tuple[str, bytes]]:
        """Headers that let a router or dead-letter inspector read a message without decoding it."""
        return [
            ("type", self.type.encode()),
            ("version", str(self.version).encode()),
            ("tenant", self.tenant.encode()),
        ]

    def with_data(self, data: P) -> Self:
        return self.model_copy(update={"data": data})
