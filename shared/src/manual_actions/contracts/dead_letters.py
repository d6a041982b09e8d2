"""The dead-letter record format (topic ``manual-actions.dead-letters``).

A dead letter is the failed message itself: same key, same value bytes (never re-encoded, so a
message that could not be decoded is preserved exactly), the original headers kept, plus the
headers below that say where it came from and why it failed. Header values are UTF-8 text.
Replaying a dead letter means producing its key and value to ``dlq.original_topic`` again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

#: Why the message was dead-lettered: ``InvalidMessage.reason`` or the handler's PermanentError.
REASON = "dlq.reason"
#: The topic the message was consumed from.
ORIGINAL_TOPIC = "dlq.original_topic"
#: Its partition there (decimal).
ORIGINAL_PARTITION = "dlq.original_partition"
#: Its offset there (decimal).
ORIGINAL_OFFSET = "dlq.original_offset"
#: The consumer group that gave up on it (the consuming service's name).
CONSUMER_GROUP = "dlq.consumer_group"
#: When it was dead-lettered: ISO 8601 UTC, e.g. ``2025-03-04T10:15:30.123456+00:00``.
FAILED_AT = "dlq.failed_at"

#: Every header a dead letter must carry, in the order they are written.
HEADERS: tuple[str, ...] = (
    REASON,
    ORIGINAL_TOPIC,
    ORIGINAL_PARTITION,
    ORIGINAL_OFFSET,
    CONSUMER_GROUP,
    FAILED_AT,
)

# A reason longer than this is cut: a pathological validation message must not make the
# dead-letter record itself too large to produce.
MAX_REASON_BYTES = 2000


@dataclass(frozen=True)
class DeadLetterInfo:
    """The dead-letter headers, parsed."""

    reason: str
    original_topic: str
    original_partition: int
    original_offset: int
    consumer_group: str
    failed_at: datetime


def dead_letter_headers(
    *,
    reason: str,
    original_topic: str,
    original_partition: int,
    original_offset: int,
    consumer_group: str,
    failed_at: datetime | None = None,
    original_headers: Iterable[tuple[str, bytes]] = (),
) -> list[tuple[str, bytes]]:
    """Headers for the dead letter of one message, in aiokafka's ``[(name, bytes)]`` form.

    ``original_headers`` are kept first (minus any stale ``dlq.*`` ones from an earlier
    dead-lettering), then the ``dlq.*`` headers are appended.
    """
    when = (failed_at or datetime.now(UTC)).astimezone(UTC)
    encoded_reason = reason.encode()[:MAX_REASON_BYTES].decode(errors="ignore")
    kept = [(name, value) for name, value in original_headers if not name.startswith("dlq.")]
    return [
        *kept,
        (REASON, encoded_reason.encode()),
        (ORIGINAL_TOPIC, original_topic.encode()),
        (ORIGINAL_PARTITION, str(original_partition).encode()),
        (ORIGINAL_OFFSET, str(original_offset).encode()),
        (CONSUMER_GROUP, consumer_group.encode()),
        (FAILED_AT, when.isoformat().encode()),
    ]


def parse_dead_letter_headers(headers: Sequence[tuple[str, bytes]] | Mapping[str, bytes]) -> DeadLetterInfo:
    """Read the ``dlq.*`` headers back; raise ValueError naming a missing or malformed header."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    values: dict[str, str] = {}
    for name, value in items:
        if name in HEADERS:
            values[name] = value.decode()
    missing = [name for name in HEADERS if name not in values]
    if missing:
        raise ValueError(f"dead letter lacks header(s): {', '.join(missing)}")
    try:
        partition = int(values[ORIGINAL_PARTITION])
    except ValueError as exc:
        raise ValueError(f"header {ORIGINAL_PARTITION}: not an integer") from exc
    try:
        offset = int(values[ORIGINAL_OFFSET])
    except ValueError as exc:
        raise ValueError(f"header {ORIGINAL_OFFSET}: not an integer") from exc
    try:
        failed_at = datetime.fromisoformat(values[FAILED_AT])
    except ValueError as exc:
        raise ValueError(f"header {FAILED_AT}: not an ISO 8601 time") from exc
    return DeadLetterInfo(
        reason=values[REASON],
        original_topic=values[ORIGINAL_TOPIC],
        original_partition=partition,
        original_offset=offset,
        consumer_group=values[CONSUMER_GROUP],
        failed_at=failed_at,
    )
