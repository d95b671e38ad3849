"""Batches on the real broker and Faust: a batch's table writes land in the
changelog partition of the events that caused them, once per entity, and a
restarted worker recovers every state."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from driftloop.v1 import common_pb2, events_pb2
from driftloop_core.feature_math import FeatureMath
from driftloop_core.featureset import default_featureset_path, load_featureset
from driftloop_core.kafka import Outgoing, PoisonMessage, Publisher, Record, TopicSpec
from driftloop_core.kafka.topics import ensure_topics
from driftloop_core.settings import Settings
from driftloop_features.adapters.faust_app import (
    FeaturesApp,
    build_faust_app,
    changelog_topic,
    faust_topic_specs,
)
from driftloop_features.entrypoints.events import EventsAgent, StreamAgent
from driftloop_features.stream import OBSERVED, StreamHandler
from driftloop_testing.kafka import read_topic

pytestmark = pytest.mark.integration

FS = load_featureset(default_featureset_path())
T0 = 1_763_800_000_000
ENTITIES = ("c0", "c1", "c2", "c3", "c4", "c5")
EVENTS_EACH = 8


class Stack:
    def __init__(self, settings: Settings, unique: str) -> None:
        self.settings = settings
        self.app_id = f"features-{unique}"
        self.topic = f"events.valid.{unique}"
        self.offline_topic = f"features.offline.{unique}"
        self.apps: list[FeaturesApp] = []

    def worker(self) -> tuple[FeaturesApp, StreamHandler]:
        features = build_faust_app(self.settings, app_id=self.app_id)
        handler = StreamHandler(FeatureMath(FS), features.table, offline_topic=self.offline_topic)

        async def deadletter(poisoned: Sequence[tuple[Record, PoisonMessage]]) -> None:
            raise AssertionError(f"dead-lettered: {[poison.reason for _, poison in poisoned]}")

        agent = EventsAgent(handler, features.send, deadletter, group=self.app_id)
        StreamAgent(agent, self.settings.kafka).attach(features, topic=self.topic)
        self.apps.append(features)
        return features, handler

    async def committed(self) -> int:
        """The offsets committed, summed over the partitions."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka.bootstrap_servers, group_id=self.app_id
        )
        await consumer.start()
        try:
            partitions = range(self.settings.kafka.partitions)
            return sum(
                [await consumer.committed(TopicPartition(self.topic, p)) or 0 for p in partitions]
            )
        finally:
            await consumer.stop()


@pytest.fixture
async def stack(settings: Settings, unique: str) -> AsyncIterator[Stack]:
    ready = Stack(settings, unique)
    kafka = settings.kafka
    await ensure_topics(
        kafka,
        [
            TopicSpec(ready.topic, kafka.partitions),
            TopicSpec(ready.offline_topic, kafka.partitions),
            *faust_topic_specs(settings, ready.app_id),
        ],
    )
    yield ready
    for app in ready.apps:
        await app.stop()


async def publish_all(stack: Stack) -> dict[str, int]:
    """EVENTS_EACH observations of every entity, interleaved; returns each
    entity's partition."""
    outgoing = []
    for i in range(EVENTS_EACH):
        for entity in ENTITIES:
            event_id = f"{entity}-{i}"
            message = events_pb2.Observation(event_id=event_id, entity_id=entity, feature_set="x")
            message.event_time.FromMilliseconds(T0 + i * 1000)
            message.values["amount"].CopyFrom(common_pb2.FeatureValue(float_value=1.0))
            outgoing.append(
                Outgoing(stack.topic, message.SerializeToString(), entity, OBSERVED, event_id)
            )
    async with Publisher(stack.settings) as publisher:
        sent = await publisher.publish_batch(outgoing)
    return {str(out.key): meta.partition for out, meta in zip(outgoing, sent, strict=True)}


async def until(check: Callable[[], bool], timeout_s: float = 60) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():  # noqa: ASYNC110 - polling state another task changes
            await asyncio.sleep(0.1)


def counted(handler: StreamHandler, entity: str) -> list[str]:
    return [event.event_id for event in handler.state(entity).events]


async def test_a_batch_writes_each_state_to_its_events_partition_and_recovers(
    stack: Stack,
) -> None:
    partition_of = await publish_all(stack)
    expected = {e: [f"{e}-{i}" for i in range(EVENTS_EACH)] for e in ENTITIES}

    features, handler = stack.worker()
    await features.start()
    await until(lambda: all(counted(handler, e) == expected[e] for e in ENTITIES))
    published = len(ENTITIES) * EVENTS_EACH
    async with asyncio.timeout(30):
        # Every offset committed: every batch acked.
        while await stack.committed() < published:  # noqa: ASYNC110 - polling the broker
            await asyncio.sleep(0.5)
    await features.stop()

    changelog = await read_topic(stack.settings, changelog_topic(stack.app_id))
    writes: dict[str, list[int]] = defaultdict(list)
    for record in changelog:
        writes[json.loads(record.key)].append(record.partition)
    for entity in ENTITIES:
        # In the partition of the entity's events, so recovery finds it there.
        assert set(writes[entity]) == {partition_of[entity]}
    # Batched: fewer writes than events (each entity's events came in one go).
    assert len(changelog) < len(ENTITIES) * EVENTS_EACH

    # A new worker recovers every state from the changelog.
    restarted, restarted_handler = stack.worker()
    await restarted.start()
    tables: Any = restarted.app.tables
    await asyncio.wait_for(tables.recovery.completed.wait(), 60)
    restarted_handler.load_all()
    for entity in ENTITIES:
        assert counted(restarted_handler, entity) == expected[entity]
