"""The session's Kafka broker: a real produce/consume round trip and the topic policy."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import UnknownTopicOrPartitionError

pytestmark = pytest.mark.integration


async def _create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()


async def test_round_trip_keeps_per_key_order_and_commits(kafka_bootstrap: str) -> None:
    topic = f"devstack-test-{uuid.uuid4().hex[:8]}"
    await _create_topic(kafka_bootstrap, topic, partitions=3)

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for n in range(12):
            await producer.send_and_wait(topic, f"{n}".encode(), key=f"key-{n % 3}".encode())
    finally:
        await producer.stop()

    group = f"devstack-test-{uuid.uuid4().hex[:8]}"
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    received: dict[str, list[int]] = {}
    try:
        total = 0
        for _ in range(100):
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    assert record.key is not None and record.value is not None
                    received.setdefault(record.key.decode(), []).append(int(record.value))
                    total += 1
            if total >= 12:
                break
        await consumer.commit()
        committed = {tp: await consumer.committed(tp) for tp in (TopicPartition(topic, p) for p in range(3))}
    finally:
        await consumer.stop()

    assert received == {
        "key-0": [0, 3, 6, 9],
        "key-1": [1, 4, 7, 10],
        "key-2": [2, 5, 8, 11],
    }
    # Each key went to one partition, so the committed offsets add up to every message.
    assert sum(offset or 0 for offset in committed.values()) == 12


async def test_topics_are_not_created_on_first_use(kafka_bootstrap: str) -> None:
    """auto.create.topics.enable=false: a topic missing from the registry is an error, not a new topic."""
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, request_timeout_ms=2000)
    await producer.start()
    try:
        with pytest.raises(UnknownTopicOrPartitionError):
            await producer.send_and_wait(f"devstack-missing-{uuid.uuid4().hex[:8]}", b"x")
    finally:
        await producer.stop()


async def test_broker_defaults_suit_a_single_node(kafka_bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.BROKER, "1")])
    finally:
        await admin.close()
    entries = {
        entry[0]: entry[1]
        for response in responses
        for resource in response.resources
        for entry in resource[4]
    }
    assert entries["num.partitions"] == "6"
    assert entries["offsets.topic.replication.factor"] == "1"
    assert entries["group.initial.rebalance.delay.ms"] == "0"
