"""End offsets are right even where the embedded broker reports them per batch."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from driftloop_core.kafka import TopicSpec, ensure_topics
from driftloop_core.kafka.offsets import end_offsets
from driftloop_core.settings import Settings

pytestmark = pytest.mark.integration


async def test_end_offsets_count_every_record_of_batched_sends(
    settings: Settings, unique: str
) -> None:
    topic = f"t.ends.{unique}"
    await ensure_topics(settings.kafka, [TopicSpec(topic, 2), TopicSpec(f"{topic}.empty", 1)])
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, linger_ms=20)
    await producer.start()
    try:
        for _ in range(3):
            sent = [await producer.send(topic, b"v", partition=0) for _ in range(5)]
            await asyncio.gather(*sent)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers)
    await consumer.start()
    try:
        tps = [
            TopicPartition(topic, 0),
            TopicPartition(topic, 1),
            TopicPartition(f"{topic}.empty", 0),
        ]
        ends = await end_offsets(settings.kafka, consumer, tps)
    finally:
        await consumer.stop()
    assert ends == {tps[0]: 15, tps[1]: 0, tps[2]: 0}
