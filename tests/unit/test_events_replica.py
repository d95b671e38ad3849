"""Inference's replica counted from `events.valid` (`FEATURES_SOURCE=events`)
holds the feature store's states: fed the same records, in the same order, a
lookup through the replica answers what the store's lookup answers, for every
entity and at every point in time, replays, late events and labels included."""

from __future__ import annotations

import random
import time

from driftloop.v1 import events_pb2
from driftloop_core.feature_math import FeatureMath
from driftloop_core.featureset import default_featureset_path, load_featureset
from driftloop_core.kafka import Publisher, Topics
from driftloop_core.kafka.consumer import Record
from driftloop_core.kafka.headers import make_headers, parse_headers
from driftloop_core.settings import Settings
from driftloop_core.values import from_feature_value
from driftloop_features.stream import LABELLED, OBSERVED, StreamHandler
from driftloop_inference.adapters.feature_replica import EventsReplica
from driftloop_inference.adapters.features import FeatureClient
from google.protobuf.timestamp_pb2 import Timestamp

FS = load_featureset(default_featureset_path())
ENTITIES = [f"cust-{i}" for i in range(6)]


def record(kind: str, message: events_pb2.Observation | events_pb2.Label, offset: int) -> Record:
    key = getattr(message, "entity_id", "") or "none"
    headers = make_headers(kind, "/test", event_id=message.event_id).to_kafka()
    return Record(
        Topics.VALID, offset % 4, offset, key.encode(), message.SerializeToString(),
        parse_headers(headers), tuple(headers), 0,
    )  # fmt: skip


def stream(rng: random.Random, now_ms: int) -> list[Record]:
    """Observations over the last 50 minutes, mostly in order, some late, some
    sent twice, labels between them."""
    records: list[Record] = []
    for i in range(600):
        message = events_pb2.Observation(
            event_id=f"e{i}", entity_id=rng.choice(ENTITIES), feature_set=FS.name
        )
        jitter = rng.choice([0, 0, 0, -rng.randrange(1, 600_000)])
        message.event_time.FromMilliseconds(now_ms - 3_000_000 + i * 5_000 + jitter)
        message.values["amount"].float_value = round(rng.uniform(1, 400), 2)
        message.values["channel"].string_value = rng.choice(["web", "pos", "atm"])
        message.values["hour"].int_value = rng.randrange(24)
        records.append(record(OBSERVED, message, len(records)))
        if rng.random() < 0.05:  # a replay of an event already sent
            records.append(records[rng.randrange(len(records))])
        if rng.random() < 0.1:
            label = events_pb2.Label(event_id=f"e{i}", label=1)
            records.append(record(LABELLED, label, len(records)))
    return records


async def test_the_replica_counted_from_events_answers_as_the_store() -> None:
    now_ms = int(time.time() * 1000)
    records = stream(random.Random(4), now_ms)
    math = FeatureMath(FS)
    store = StreamHandler(math, {})
    for each in records:
        handled = store.handle(each)
        if handled.observed is not None:
            store.count(handled.observed)
    settings = Settings()
    replica = EventsReplica(
        settings, FS, Topics.VALID, FeatureClient(settings, "127.0.0.1:1", 1.0), Publisher(settings)
    )
    for start in range(0, len(records), 50):  # in the batches a consumer hands out
        await replica._apply(records[start : start + 50])
    replica.ready = True

    names = list(math.feature_names)
    for entity in ENTITIES:
        for as_of_ms in (now_ms - 1_800_000, now_ms - 600_000, now_ms):
            as_of = Timestamp()
            as_of.FromMilliseconds(as_of_ms)
            values, _ = math.lookup(store.state(entity), names, as_of_ms=as_of_ms, now_ms=now_ms)
            replica_values = await replica.online(entity, [], as_of, 1.0)
            assert {k: from_feature_value(v) for k, v in replica_values.items()} == values, (
                entity,
                as_of_ms,
            )
    assert replica.entities == len(ENTITIES)
