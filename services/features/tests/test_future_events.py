"""An event from far ahead of the wall clock cannot poison an entity: written
straight to the feature store's source topic (by confluent-kafka, as anyone who
may write the topic could), it is dead-lettered with rule `future`, the entity's
clock stays where its real events put it, and real events after it still count.
On the real broker, with the real feature store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from confluent_kafka import KafkaException, Producer
from driftloop.v1 import common_pb2, events_pb2, features_pb2, features_pb2_grpc
from driftloop_core.broker import free_port
from driftloop_core.featureset import default_featureset_path, load_featureset
from driftloop_core.kafka.headers import make_headers
from driftloop_core.settings import Settings
from driftloop_features.bootstrap import FeatureStore, build
from driftloop_features.stream import OBSERVED
from driftloop_testing import collect, eventually

pytestmark = pytest.mark.integration

FS = load_featureset(default_featureset_path())
MIN = 60_000
YEAR = 365 * 24 * 60 * MIN


@pytest.fixture
async def store(settings: Settings, unique: str) -> AsyncIterator[FeatureStore]:
    """A feature store on topics of this test's own, ready to serve."""
    running = build(
        settings,
        FS,
        f"127.0.0.1:{free_port()}",
        app_id=f"features-{unique}",
        source_topic=f"events.valid.{unique}",
        offline_topic=f"features.offline.{unique}",
        offline_group=f"offline.{unique}",
        deadletter_topic=f"deadletter.{unique}",
    )
    await running.start()
    try:
        await eventually(lambda: running.recovery.done, 90, "the feature store to be ready")
        yield running
    finally:
        await running.stop()


def observation(event_id: str, entity: str, t_ms: int, amount: float) -> bytes:
    message = events_pb2.Observation(event_id=event_id, entity_id=entity, feature_set=FS.name)
    message.event_time.FromMilliseconds(t_ms)
    message.values["amount"].CopyFrom(common_pb2.FeatureValue(float_value=amount))
    message.values["channel"].CopyFrom(common_pb2.FeatureValue(string_value="web"))
    message.values["hour"].CopyFrom(common_pb2.FeatureValue(int_value=3))
    return message.SerializeToString()


async def write(
    settings: Settings, topic: str, entity: str, events: list[tuple[str, int, float]]
) -> None:
    """Observations of `entity` ((event id, event time, amount)) keyed by it, with
    CloudEvents headers, in order, by librdkafka with the Java client's
    partitioner (so they land where ingestion's records of the entity would)."""
    producer = Producer(
        {"bootstrap.servers": settings.kafka.bootstrap_servers, "partitioner": "murmur2_random"}
    )
    failed: list[object] = []

    def delivered(error: object, _record: object) -> None:
        if error is not None:
            failed.append(error)

    for event_id, t_ms, amount in events:
        value = observation(event_id, entity, t_ms, amount)
        headers: list[tuple[str, str | bytes | None]] = []
        headers.extend(make_headers(OBSERVED, "/stranger", event_id=event_id).to_kafka())
        producer.produce(topic, value, key=entity, headers=headers, on_delivery=delivered)
    left = await asyncio.to_thread(producer.flush, 30)
    if left or failed:
        raise KafkaException(f"{left} records not delivered, errors {failed[:3]}")


async def online(endpoint: str, entity: str) -> features_pb2.EntityFeatures:
    async with grpc.aio.insecure_channel(endpoint) as channel:
        reply = await features_pb2_grpc.FeatureServiceStub(channel).GetOnlineFeatures(
            features_pb2.GetOnlineFeaturesRequest(entity_ids=[entity])
        )
    [found] = reply.entities
    return found


async def counted(
    endpoint: str, entity: str, count: int, timeout_s: float
) -> features_pb2.EntityFeatures:
    """The entity's online features once `count` events are in its 10-minute window."""
    async with asyncio.timeout(timeout_s):
        while True:
            found = await online(endpoint, entity)
            if "txn_count_10m" in found.values and found.values["txn_count_10m"].int_value == count:
                return found
            await asyncio.sleep(0.2)


async def test_an_event_from_far_ahead_neither_moves_the_entity_nor_makes_real_ones_late(
    settings: Settings, store: FeatureStore, unique: str
) -> None:
    topic = f"events.valid.{unique}"
    entity = f"{unique}-c1"
    now = int(time.time() * 1000)
    await write(
        settings,
        topic,
        entity,
        [
            (f"{unique}-real1", now - 2 * MIN, 10.0),
            (f"{unique}-ahead", now + YEAR, 9e9),
            (f"{unique}-real2", now - MIN, 30.0),
        ],
    )

    found = await counted(store.server.endpoint, entity, 2, timeout_s=60)
    # The entity's clock is its latest real event; the mean holds the real amounts only.
    assert found.updated_at.ToMilliseconds() == now - MIN
    assert found.values["amount_mean_1h"].float_value == pytest.approx(20.0)
    assert found.values["amount"].float_value == 30.0

    letters = [
        events_pb2.DeadLetter.FromString(record.value)
        for record in await collect(settings, f"deadletter.{unique}", at_least=1, quiet_s=1.0)
    ]
    assert [(x.field, x.rule, x.event_id) for x in letters] == [
        ("event_time", "future", f"{unique}-ahead")
    ]
    assert "is later than the wall clock" in letters[0].reason
    assert letters[0].source_topic == topic

    # A real event after it still counts; nothing was dead-lettered as late.
    await write(settings, topic, entity, [(f"{unique}-real3", now, 50.0)])

    found = await counted(store.server.endpoint, entity, 3, timeout_s=30)
    assert found.updated_at.ToMilliseconds() == now
    assert found.values["amount_mean_1h"].float_value == pytest.approx(30.0)
    again = await collect(settings, f"deadletter.{unique}", at_least=1, quiet_s=1.0)
    assert len(again) == 1
