"""The feature store on the real broker: online aggregates, point-in-time rows,
replays, and recovery of its state after a restart."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from driftloop.v1 import common_pb2, events_pb2, features_pb2, features_pb2_grpc
from driftloop_core.broker import free_port
from driftloop_core.feature_math import window_start
from driftloop_core.featureset import default_featureset_path, load_featureset
from driftloop_core.kafka import Outgoing, Publisher
from driftloop_core.settings import Settings
from driftloop_features.bootstrap import FeatureStore, build
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytestmark = pytest.mark.integration

FS = load_featureset(default_featureset_path())
MIN = 60_000


@dataclass(frozen=True)
class Event:
    event_id: str
    entity: str
    time_ms: int
    amount: float
    channel: str
    hour: int
    label: int


def generate(unique: str, count: int, entities: int) -> list[Event]:
    rng = random.Random(11)
    now = int(time.time() * 1000)
    clock = now - 90 * MIN
    events = []
    for i in range(count):
        clock += rng.randint(0, 90 * MIN // count * 2)
        late = rng.random() < 0.15
        events.append(
            Event(
                event_id=f"{unique}-e{i}",
                entity=f"{unique}-c{rng.randrange(entities)}",
                time_ms=min(clock - (rng.randint(1, 3 * MIN) if late else 0), now),
                amount=round(rng.uniform(1, 300), 2),
                channel=rng.choice(["web", "pos", "atm"]),
                hour=rng.randrange(24),
                label=rng.randrange(2),
            )
        )
    return events


def observation(event: Event) -> events_pb2.Observation:
    message = events_pb2.Observation(
        event_id=event.event_id,
        entity_id=event.entity,
        feature_set=FS.name,
        values={
            "amount": common_pb2.FeatureValue(float_value=event.amount),
            "channel": common_pb2.FeatureValue(string_value=event.channel),
            "hour": common_pb2.FeatureValue(int_value=event.hour),
        },
    )
    message.event_time.FromMilliseconds(event.time_ms)
    return message


def reference(history: list[Event], entity: str, as_of: int) -> dict[str, float | int]:
    mine = [e for e in history if e.entity == entity]
    hour = [e.amount for e in mine if window_start(as_of, 60 * MIN) <= e.time_ms < as_of]
    ten = [e for e in mine if window_start(as_of, 10 * MIN) <= e.time_ms < as_of]
    result: dict[str, float | int] = {"txn_count_10m": len(ten)}
    if hour:
        result["amount_mean_1h"] = sum(hour) / len(hour)
    return result


def plain(value: common_pb2.FeatureValue) -> float | int | str:
    kind = value.WhichOneof("kind")
    assert kind is not None
    result: float | int | str = getattr(value, kind)
    return result


async def publish(settings: Settings, events: list[Event], labels: list[Event]) -> None:
    async with Publisher(settings) as publisher:
        await publisher.publish_batch(
            [Outgoing.event(observation(e), key=e.entity, event_id=e.event_id) for e in events]
        )
        await publisher.publish_batch(
            [
                Outgoing.event(
                    events_pb2.Label(event_id=e.event_id, entity_id=e.entity, label=e.label),
                    key=e.entity,
                    event_id=f"label-{e.event_id}",
                )
                for e in labels
            ]
        )


@pytest.fixture
async def store_factory(settings: Settings) -> AsyncIterator[list[FeatureStore]]:
    stores: list[FeatureStore] = []
    yield stores
    for store in stores:
        await store.stop()


async def start_store(settings: Settings, stores: list[FeatureStore]) -> FeatureStore:
    store = build(settings, FS, f"127.0.0.1:{free_port()}")
    stores.append(store)
    await store.start()
    async with grpc.aio.insecure_channel(store.server.endpoint) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        async with asyncio.timeout(60):
            while True:
                reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    break
                await asyncio.sleep(0.2)
    return store


async def online(
    endpoint: str, entities: list[str], as_of_ms: int | None = None
) -> dict[str, features_pb2.EntityFeatures]:
    request = features_pb2.GetOnlineFeaturesRequest(entity_ids=entities)
    if as_of_ms is not None:
        request.as_of.FromMilliseconds(as_of_ms)
    async with grpc.aio.insecure_channel(endpoint) as channel:
        reply = await features_pb2_grpc.FeatureServiceStub(channel).GetOnlineFeatures(request)
    return {entry.entity_id: entry for entry in reply.entities}


async def training_rows(endpoint: str) -> list[features_pb2.TrainingRow]:
    async with grpc.aio.insecure_channel(endpoint) as channel:
        reply = await features_pb2_grpc.FeatureServiceStub(channel).GetTrainingSet(
            features_pb2.GetTrainingSetRequest(model=FS.name, include_rows=True)
        )
    return list(reply.rows)


async def wait_for_rows(endpoint: str, unique: str, count: int) -> list[features_pb2.TrainingRow]:
    async with asyncio.timeout(60):
        while True:
            rows = [r for r in await training_rows(endpoint) if r.event_id.startswith(unique)]
            if len(rows) >= count:
                return rows
            await asyncio.sleep(0.5)


async def test_aggregates_point_in_time_replay_and_restart(
    settings: Settings, unique: str, store_factory: list[FeatureStore]
) -> None:
    events = generate(unique, 300, entities=7)
    labelled = events[::2]
    await publish(settings, events, labelled)
    store = await start_store(settings, store_factory)
    endpoint = store.server.endpoint
    rows = await wait_for_rows(endpoint, unique, len(labelled))

    # Point in time: each row holds what serving saw just before its event: the
    # aggregates over events that had arrived and are earlier in event time.
    position = {e.event_id: i for i, e in enumerate(events)}
    assert sorted(r.event_id for r in rows) == sorted(e.event_id for e in labelled)
    for row in rows:
        event = events[position[row.event_id]]
        arrived_before = events[: position[row.event_id]]
        expected = reference(arrived_before, event.entity, event.time_ms)
        got = {
            k: plain(v)
            for k, v in row.features.items()
            if k in expected or k.startswith(("amount_", "txn_"))
        }
        assert got.keys() == expected.keys(), row.event_id
        assert got["txn_count_10m"] == expected["txn_count_10m"]
        if "amount_mean_1h" in expected:
            assert got["amount_mean_1h"] == pytest.approx(expected["amount_mean_1h"])
        assert plain(row.features["amount"]) == event.amount
        assert row.label == event.label

    # Online: the aggregates over every event, per entity, equal the reference.
    entities = sorted({e.entity for e in events})
    as_of = max(e.time_ms for e in events) + 1
    found = await online(endpoint, entities, as_of)
    for entity in entities:
        expected = reference(events, entity, as_of)
        values = {k: plain(v) for k, v in found[entity].values.items()}
        assert values["txn_count_10m"] == expected["txn_count_10m"]
        assert values["amount_mean_1h"] == pytest.approx(expected["amount_mean_1h"])
        latest = max((e for e in events if e.entity == entity), key=lambda e: e.time_ms)
        assert found[entity].updated_at.ToMilliseconds() == latest.time_ms
        assert set(found[entity].statuses.values()) == {features_pb2.FEATURE_STATUS_PRESENT}

    # Replaying every event and label changes neither the online state nor the rows.
    before = await online(endpoint, entities, as_of)
    await publish(settings, events, labelled)
    marker = generate(f"{unique}-marker", 1, entities=1)
    await publish(settings, marker, marker)
    await wait_for_rows(endpoint, f"{unique}-marker", 1)
    assert await online(endpoint, entities, as_of) == before
    rows_after = [r for r in await training_rows(endpoint) if r.event_id.startswith(f"{unique}-e")]
    assert sorted(r.event_id for r in rows_after) == sorted(r.event_id for r in rows)

    # A new worker recovers the table from its changelog, exactly.
    await store.stop()
    store_factory.remove(store)
    restarted = await start_store(settings, store_factory)
    assert await online(restarted.server.endpoint, entities, as_of) == before


async def test_unknown_entity_and_feature(
    settings: Settings, store_factory: list[FeatureStore], unique: str
) -> None:
    store = await start_store(settings, store_factory)
    found = await online(store.server.endpoint, [f"{unique}-nobody"])
    entry = found[f"{unique}-nobody"]
    assert not entry.values
    assert set(entry.statuses.values()) == {features_pb2.FEATURE_STATUS_NOT_FOUND}
    async with grpc.aio.insecure_channel(store.server.endpoint) as channel:
        stub = features_pb2_grpc.FeatureServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetOnlineFeatures(
                features_pb2.GetOnlineFeaturesRequest(entity_ids=["x"], feature_names=["colour"])
            )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "colour" in (caught.value.details() or "")
