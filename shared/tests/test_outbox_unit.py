"""Outbox pieces that need no database: the relay's key hash and the batch row format."""

from __future__ import annotations

import json
import random

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from manual_actions.outbox import BATCH_HEADER, OUTBOX_COPY_COLUMNS, batch_record, murmur2, partition_for


def test_murmur2_equals_aiokafkas_for_every_length_and_byte() -> None:
    rng = random.Random(7)
    for length in range(0, 70):
        for _ in range(50):
            data = bytes(rng.randrange(256) for _ in range(length))
            assert murmur2(data) == aiokafka_murmur2(data), (length, data)
    for data in (b"", b"\x00", b"\xff" * 3, b"\xff" * 64, b"a" * 37):
        assert murmur2(data) == aiokafka_murmur2(data)


def test_partition_for_is_the_default_partitioners_choice() -> None:
    rng = random.Random(11)
    for count in (1, 3, 6, 7):
        partitions = list(range(count))
        for _ in range(300):
            key = str(rng.getrandbits(128)).encode()
            assert partition_for(key, partitions) == DefaultPartitioner()(key, partitions, partitions)


def test_batch_record_carries_items_in_order_with_the_marker_header() -> None:
    items = [("k1", '{"id": 1}'), ("k2", '{"id": "two \\"quoted\\""}'), ("k1", "{}")]
    record = batch_record("topic-a", "t1", [("type", "ActionQueued"), ("version", "1")], items)
    assert len(record) == len(OUTBOX_COPY_COLUMNS)
    row = dict(zip(OUTBOX_COPY_COLUMNS, record, strict=True))
    assert (row["tenant"], row["topic"], row["key"]) == ("t1", "topic-a", "")
    assert [tuple(i) for i in json.loads(row["value"])] == items
    assert json.loads(row["headers"]) == [[BATCH_HEADER, "3"], ["type", "ActionQueued"], ["version", "1"]]
    assert batch_record("topic-a", "t1", [], items)[0] != record[0]  # a new row id each time
    with pytest.raises(ValueError):
        batch_record("topic-a", "t1", [], [])
