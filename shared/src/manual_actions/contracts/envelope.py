"""The envelope every event and command travels in.

Contract: ``id`` is unique per message and is what consumers deduplicate on; ``subject`` is the
entity the message is about (also the Kafka key, so one entity's messages stay in order);
``sequence`` increases by one for each message about the same subject from its owning service;
``tenant`` is always set. ``data`` holds the typed payload named by ``type`` and ``version``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field


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


def utcnow() -> datetime:
    return datetime.now(UTC)


class Envelope(BaseModel, Generic[P]):
    """A message on the wire: metadata plus one typed payload."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: uuid.UUID = Field(default_factory=uuid.uuid4, description="Unique message id; dedupe key.")
    type: str = Field(description="Payload type, e.g. ActionQueued.")
    version: int = Field(ge=1, description="Payload schema version.")
    source: str = Field(min_length=1, description="Producing service, e.g. workflow-runner.")
    time: datetime = Field(default_factory=utcnow, description="When the fact happened (UTC).")
    tenant: str = Field(min_length=1, max_length=64, description="Owning tenant id.")
    subject: str = Field(min_length=1, description="Entity the message is about; the Kafka key.")
    sequence: int = Field(ge=1, description="Per-subject sequence number from the owning service.")
    causation_id: uuid.UUID | None = Field(default=None, description="Id of the message that caused this one.")
    data: P

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
        return Envelope[type(payload)](  # type: ignore[misc]
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
