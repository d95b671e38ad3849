"""The feature store process: it exits non-zero when a background part dies, so
`driftloop up` restarts it instead of leaving a store that serves but logs nothing."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from driftloop.v1 import features_pb2
from driftloop_core.broker import free_port
from driftloop_core.featureset import default_featureset_path, load_featureset
from driftloop_core.kafka import Publisher, TopicSpec, ensure_topics
from driftloop_core.settings import Settings
from driftloop_features.bootstrap import FeatureStore, build
from driftloop_features.offline import offline_dir, offline_row
from driftloop_testing import eventually

pytestmark = pytest.mark.integration

FS = load_featureset(default_featureset_path())


def store_for(settings: Settings, unique: str) -> FeatureStore:
    return build(
        settings,
        FS,
        f"127.0.0.1:{free_port()}",
        app_id=f"features-{unique}",
        source_topic=f"events.valid.{unique}",
        offline_topic=f"features.offline.{unique}",
        offline_group=f"offline.{unique}",
    )


async def test_a_healthy_store_keeps_serving_after_it_is_ready_and_stops_on_sigterm(
    settings: Settings, unique: str
) -> None:
    offline_topic = f"features.offline.{unique}"
    await ensure_topics(
        settings.kafka,
        [TopicSpec(name, settings.kafka.partitions) for name in (offline_topic,)],
    )
    store = store_for(settings, unique)
    serving = asyncio.create_task(store.run_until_signal())
    await eventually(lambda: serving.done() or store.recovery.done, 90, "the store to be ready")
    row = features_pb2.TrainingRow(event_id="e1", entity_id="c1", label=1)
    row.event_time.FromMilliseconds(1_763_800_000_000)
    async with Publisher(settings) as publisher:
        await publisher.publish_batch([offline_row(row, has_label=True, topic=offline_topic)])
    await eventually(
        lambda: serving.done() or store.sink.progress.rows_written >= 1, 30, "the row logged"
    )
    # Readiness and a flush are not endings: the store serves on.
    await asyncio.sleep(2)
    assert not serving.done(), serving.result()
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(serving, 60) == 0


async def test_a_dead_offline_sink_makes_the_service_exit_non_zero(
    settings: Settings, unique: str
) -> None:
    # The log's folder is a file: the sink cannot write there, and no retry helps.
    folder = offline_dir(settings, FS)
    folder.parent.mkdir(parents=True)
    folder.write_text("not a folder")
    offline_topic = f"features.offline.{unique}"
    await ensure_topics(settings.kafka, [TopicSpec(offline_topic, settings.kafka.partitions)])
    store = build(
        settings,
        FS,
        f"127.0.0.1:{free_port()}",
        app_id=f"features-{unique}",
        source_topic=f"events.valid.{unique}",
        offline_topic=offline_topic,
        offline_group=f"offline.{unique}",
    )
    serving = asyncio.create_task(store.run_until_signal())

    row = features_pb2.TrainingRow(event_id="e1", entity_id="c1", label=1)
    row.event_time.FromMilliseconds(1_763_800_000_000)
    async with Publisher(settings) as publisher:
        await publisher.publish_batch([offline_row(row, has_label=True, topic=offline_topic)])

    assert await asyncio.wait_for(serving, 90) == 1
    assert not list(folder.parent.glob("**/*.parquet"))
