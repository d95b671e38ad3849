"""Kafka as a user's producer and a reader see it, for tests on the real broker."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from driftloop_core.kafka.consumer import reader
from driftloop_core.kafka.offsets import true_end_offsets
from driftloop_core.settings import Settings


async def produce_json(
    bootstrap: str,
    events: Iterable[Mapping[str, Any]],
    *,
    topic: str = "events.raw",
    key_field: str | None = None,
    pause_every: int = 0,
    pause_s: float = 0.0,
) -> int:
    """Send events as JSON lines, as a plain producer does (no headers), keyed by
    `key_field` when given; pause `pause_s` every `pause_every` events. Returns
    how many were sent, all acknowledged."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    sent = 0
    try:
        for event in events:
            key = str(event[key_field]).encode() if key_field else None
            await producer.send(topic, json.dumps(event).encode(), key=key)
            sent += 1
            if pause_every and sent % pause_every == 0:
                await producer.flush()
                await asyncio.sleep(pause_s)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


async def read_topic(settings: Settings, topic: str, *, timeout_s: float = 30.0) -> list[Any]:
    """Every record of `topic` up to its current end, in partition order."""
    kafka = settings.kafka
    consumer = reader(settings, client_suffix="test-reader")
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            return []
        consumer.assign(partitions)
        ends = await true_end_offsets(kafka, await consumer.end_offsets(partitions))
        await consumer.seek_to_beginning(*partitions)
        records: list[Any] = []
        async with asyncio.timeout(timeout_s):
            while any([await consumer.position(tp) < ends[tp] for tp in partitions]):
                for messages in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(messages)
        return [r for r in records if r.offset < ends[TopicPartition(r.topic, r.partition)]]
    finally:
        await consumer.stop()


async def collect(
    settings: Settings,
    topic: str,
    keep: Callable[[Any], bool] = lambda record: True,
    *,
    at_least: int,
    quiet_s: float = 0.5,
    timeout_s: float = 30.0,
    or_fewer: bool = False,
) -> list[Any]:
    """Records of `topic` (from its start) that `keep` accepts: waits until
    `at_least` arrived, then for `quiet_s` more with nothing new, so that extra
    ones (a duplicate, a second dead letter) show up too. After `timeout_s`,
    raises TimeoutError, or with `or_fewer` returns what arrived (to show that
    something did not)."""
    consumer = reader(settings, topic, client_suffix="test-collect")
    await consumer.start()
    found: list[Any] = []
    try:
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        while len(found) < at_least or time.monotonic() - quiet_since < quiet_s:
            if time.monotonic() > deadline:
                if or_fewer:
                    break
                raise TimeoutError(f"{len(found)} of {at_least} records on {topic}")
            batch = await consumer.getmany(timeout_ms=100)
            new = [r for records in batch.values() for r in records if keep(r)]
            if new:
                found.extend(new)
                quiet_since = time.monotonic()
    finally:
        await consumer.stop()
    return found
