"""Inference's entity states counted from `events.valid` across a restart of
the embedded broker.

The restarted broker is empty and the topic is written again from offset 0:
new events first, then the producer's replay of everything sent before. The
replica must notice the new broker, forget what it counted and read the topic
again; kept states would take the new offsets for positions already counted and
miss the new events. Checked where Predict sees it: every entity's features
equal what a store counting the new topic from nothing holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import pytest
from driftloop.v1 import events_pb2
from driftloop_core.broker import EmbeddedBroker, free_port
from driftloop_core.feature_math import EntityState, FeatureMath
from driftloop_core.featureset import default_featureset_path, load_featureset
from driftloop_core.kafka import Publisher, Topics, TopicSpec, ensure_topics
from driftloop_core.settings import load_settings
from driftloop_core.values import from_feature_value
from driftloop_inference.adapters.feature_replica import EventsReplica
from driftloop_inference.adapters.features import FeatureClient

pytestmark = pytest.mark.integration

FS = load_featureset(default_featureset_path())
ENTITIES = [f"cust-{i}" for i in range(5)]
TOPICS = [TopicSpec(Topics.VALID, 2), TopicSpec(Topics.DEADLETTER, 1)]


def observations(ids: range, now_ms: int) -> list[events_pb2.Observation]:
    out = []
    for i in ids:
        message = events_pb2.Observation(
            event_id=f"e{i}", entity_id=ENTITIES[i % len(ENTITIES)], feature_set=FS.name
        )
        message.event_time.FromMilliseconds(now_ms - 300_000 + i * 1_000)
        message.values["amount"].float_value = float(10 + i)
        message.values["channel"].string_value = "web"
        message.values["hour"].int_value = i % 24
        out.append(message)
    return out


def expected(events: list[events_pb2.Observation]) -> dict[str, dict[str, object]]:
    """What a store counting `events` from nothing answers for each entity."""
    math = FeatureMath(FS)
    now_ms = int(time.time() * 1000)
    states = {entity: EntityState.from_json(None) for entity in ENTITIES}
    for event in events:
        values = {k: from_feature_value(v) for k, v in event.values.items()}
        math.apply(
            states[event.entity_id],
            event.event_id,
            event.event_time.ToMilliseconds(),
            values,
            now_ms=now_ms,
        )
    return {
        entity: math.lookup(state, list(math.feature_names), as_of_ms=None, now_ms=now_ms)[0]
        for entity, state in states.items()
    }


async def answers(replica: EventsReplica) -> dict[str, dict[str, object]] | None:
    if not replica.ready:
        return None  # Predict would ask the feature store
    out = {}
    for entity in ENTITIES:
        values = await replica.online(entity, [], None, 1.0)
        out[entity] = {k: from_feature_value(v) for k, v in values.items()}
    return out


async def publish(publisher: Publisher, events: list[events_pb2.Observation]) -> None:
    for event in events:
        await publisher.publish_event(event, key=event.entity_id, event_id=event.event_id)


async def until_equal(replica: EventsReplica, want: dict[str, dict[str, object]]) -> None:
    last = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        last = await answers(replica)
        if last == want:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"replica ready={replica.ready} answered {last}, expected {want}")


async def test_the_replica_reads_a_restarted_broker_from_its_beginning(tmp_path: Path) -> None:
    os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    now_ms = int(time.time() * 1000)
    before, new = observations(range(60), now_ms), observations(range(60, 90), now_ms)
    async with EmbeddedBroker(free_port(), log_file=tmp_path / "broker.log") as broker:
        settings = load_settings(
            home=tmp_path / "home", kafka_bootstrap=broker.bootstrap, service_name="inference"
        )
        await ensure_topics(settings.kafka, TOPICS)
        publisher = Publisher(settings)
        await publisher.start()
        # No feature store runs: a lookup must never need it once the replica is ready.
        store = FeatureClient(settings, f"127.0.0.1:{free_port()}", 0.2)
        replica = EventsReplica(settings, FS, Topics.VALID, store, publisher, broker_check_s=0.3)
        await replica.start()
        tasks = [
            asyncio.create_task(replica.loop.run()),
            asyncio.create_task(replica.watch_broker()),
        ]
        try:
            await publish(publisher, before)
            await until_equal(replica, expected(before))
            assert replica.rewinds == 0

            assert broker.pid is not None
            os.kill(broker.pid, signal.SIGKILL)
            await broker.exited()
            broker.start()
            await broker.wait_ready()
            await ensure_topics(settings.kafka, TOPICS)
            # The new topic: new events first, then the replay of the old ones
            # (newest first), each at an offset the old topic had already used.
            await publish(publisher, new + before[::-1])
            await until_equal(replica, expected(new + before))
            assert replica.rewinds == 1
        finally:
            replica.loop.request_stop()
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await replica.loop.stop()
            await store.close()
            await publisher.stop()
