"""Dead-letter headers: the names the Kafka plumbing writes and operators read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from manual_actions.contracts import dead_letters


def test_headers_are_written_and_read_back() -> None:
    failed_at = datetime(2025, 3, 4, 15, 30, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    headers = dead_letters.dead_letter_headers(
        reason="field data.to: String should match pattern '^\\+[1-9][0-9]{6,14}$'",
        original_topic="manual-actions.sms-commands",
        original_partition=4,
        original_offset=1183,
        consumer_group="sms-sender",
        failed_at=failed_at,
        original_headers=[("type", b"SendSms"), ("version", b"1"), ("tenant", b"acme-roofing")],
    )
    assert [name for name, _ in headers][:3] == ["type", "version", "tenant"]
    assert [name for name, _ in headers][3:] == list(dead_letters.HEADERS)
    assert dict(headers)[dead_letters.FAILED_AT] == b"2025-03-04T14:30:00.123456+00:00"
    info = dead_letters.parse_dead_letter_headers(headers)
    assert info == dead_letters.DeadLetterInfo(
        reason="field data.to: String should match pattern '^\\+[1-9][0-9]{6,14}$'",
        original_topic="manual-actions.sms-commands",
        original_partition=4,
        original_offset=1183,
        consumer_group="sms-sender",
        failed_at=failed_at.astimezone(UTC),
    )


def test_dead_lettering_a_dead_letter_replaces_the_old_dlq_headers() -> None:
    first = dead_letters.dead_letter_headers(
        reason="first", original_topic="a", original_partition=0, original_offset=1, consumer_group="g1"
    )
    second = dead_letters.dead_letter_headers(
        reason="second",
        original_topic="b",
        original_partition=2,
        original_offset=3,
        consumer_group="g2",
        original_headers=first,
    )
    assert [name for name, _ in second] == list(dead_letters.HEADERS)
    assert dead_letters.parse_dead_letter_headers(dict(second)).reason == "second"


def test_long_reasons_are_cut() -> None:
    headers = dict(
        dead_letters.dead_letter_headers(
            reason="é" * 5000, original_topic="t", original_partition=0, original_offset=0, consumer_group="g"
        )
    )
    assert len(headers[dead_letters.REASON]) <= dead_letters.MAX_REASON_BYTES
    headers[dead_letters.REASON].decode()  # still valid UTF-8


def test_missing_or_bad_headers_are_named() -> None:
    with pytest.raises(ValueError, match=r"dlq\.consumer_group"):
        dead_letters.parse_dead_letter_headers(
            [
                (dead_letters.REASON, b"r"),
                (dead_letters.ORIGINAL_TOPIC, b"t"),
                (dead_letters.ORIGINAL_PARTITION, b"0"),
                (dead_letters.ORIGINAL_OFFSET, b"0"),
                (dead_letters.FAILED_AT, b"2025-03-04T10:00:00+00:00"),
            ]
        )
    headers = dict(
        dead_letters.dead_letter_headers(
            reason="r", original_topic="t", original_partition=0, original_offset=0, consumer_group="g"
        )
    )
    headers[dead_letters.ORIGINAL_OFFSET] = b"twelve"
    with pytest.raises(ValueError, match=r"dlq\.original_offset"):
        dead_letters.parse_dead_letter_headers(headers)
