"""The trainer on the real embedded broker: a request yields a `ModelTrained` whose
artifact runs in onnxruntime; a failing request yields `TrainingFailed` and the
service goes on; a replayed request publishes nothing new."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from driftloop.v1 import common_pb2, events_pb2
from driftloop_core.artifacts import ArtifactStore
from driftloop_core.featureset import FeatureSet
from driftloop_core.kafka import Publisher, Topics, TopicSpec, ensure_topics, parse_headers
from driftloop_core.settings import Settings
from driftloop_trainer.bootstrap import TrainerService, build
from driftloop_trainer.entrypoints.kafka import outcome_event_id
from driftloop_trainer.onnx_model import OnnxClassifier
from driftloop_trainer.ports import FileTrainingSets, NoChampion, TrainingSet
from driftloop_trainer.training import TrainingConfig, load_training_data

pytestmark = pytest.mark.integration

FAST = TrainingConfig(candidates=({"max_iter": 30, "max_leaf_nodes": 7}, {"max_iter": 15}))
Outcome = events_pb2.ModelTrained | events_pb2.TrainingFailed


class SwitchableTrainingSets:
    """Hands out whichever Parquet file the test currently points it at."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def training_set(self, model: str, window: common_pb2.DataWindow) -> TrainingSet:
        return await FileTrainingSets(self.path).training_set(model, window)


class Outcomes:
    """Reads models.trained and training.failed from their end as of `start()`."""

    def __init__(self, settings: Settings) -> None:
        self._consumer = AIOKafkaConsumer(
            **settings.kafka.client_options(), group_id=None, enable_auto_commit=False
        )
        self.seen: list[tuple[str, Outcome]] = []

    async def start(self) -> None:
        await self._consumer.start()
        await self._consumer.topics()  # refreshes the metadata partitions_for_topic reads
        tps = [
            TopicPartition(topic, p)
            for topic in (Topics.MODELS_TRAINED, Topics.TRAINING_FAILED)
            for p in self._consumer.partitions_for_topic(topic) or ()
        ]
        self._consumer.assign(tps)
        for tp, offset in (await self._consumer.end_offsets(tps)).items():
            self._consumer.seek(tp, offset)

    async def stop(self) -> None:
        await self._consumer.stop()

    async def wait_for(self, request_id: str, timeout_s: float = 40.0) -> tuple[str, Outcome]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for ce_id, event in self.seen:
                if event.request_id == request_id:
                    return ce_id, event
            await self.poll()
        raise AssertionError(f"no outcome for {request_id} within {timeout_s}s")

    async def poll(self) -> None:
        batches = await self._consumer.getmany(timeout_ms=300)
        for tp, messages in batches.items():
            for message in messages:
                event: Outcome = (
                    events_pb2.ModelTrained()
                    if tp.topic == Topics.MODELS_TRAINED
                    else events_pb2.TrainingFailed()
                )
                event.ParseFromString(message.value)
                self.seen.append((parse_headers(message.headers).id, event))


@pytest.fixture
async def outcomes(settings: Settings) -> AsyncIterator[Outcomes]:
    await ensure_topics(
        settings.kafka,
        [
            TopicSpec(Topics.MODELS_TRAINED, settings.kafka.partitions),
            TopicSpec(Topics.TRAINING_FAILED, settings.kafka.partitions),
        ],
    )
    reader = Outcomes(settings)
    await reader.start()
    yield reader
    await reader.stop()


def training_request(request_id: str) -> events_pb2.TrainingRequested:
    return events_pb2.TrainingRequested(
        request_id=request_id,
        model="payments",
        reason="integration test",
        trigger=events_pb2.TRAINING_TRIGGER_MANUAL,
    )


async def test_requests_become_models_or_failures_and_replays_change_nothing(
    settings: Settings,
    unique: str,
    featureset: FeatureSet,
    training_set: Path,
    empty_training_set: Path,
    outcomes: Outcomes,
) -> None:
    topic = f"t.training.{unique}"
    await ensure_topics(settings.kafka, [TopicSpec(topic, 2)])
    sets = SwitchableTrainingSets(training_set)
    service: TrainerService = build(
        settings,
        featureset,
        training_sets=sets,
        champions=NoChampion(),
        config=FAST,
        grpc_address="127.0.0.1:0",
        topic=topic,
        group_id=f"g.trainer.{unique}",
        create_topics=False,
    )
    await service.start()
    try:
        async with Publisher(settings) as publisher:

            async def send(request_id: str) -> None:
                message = training_request(request_id)
                await publisher.publish(
                    topic,
                    message.SerializeToString(),
                    key="payments",
                    ce_type="driftloop.training.requested.v1",
                )

            good = f"good-{uuid.uuid4().hex}"
            await send(good)
            ce_id, trained = await outcomes.wait_for(good)
            assert isinstance(trained, events_pb2.ModelTrained)
            assert ce_id == outcome_event_id(good, "trained")
            assert trained.metrics["roc_auc"] > 0.8
            onnx_bytes = ArtifactStore(settings.artifacts_location).get(trained.artifact)
            data = load_training_data(training_set, featureset)
            onnx_probs = OnnxClassifier(onnx_bytes).positive_probability(data)
            assert onnx_probs.shape == (600,) and np.all(np.isfinite(onnx_probs))

            sets.path = empty_training_set
            bad = f"bad-{uuid.uuid4().hex}"
            await send(bad)
            _, failed = await outcomes.wait_for(bad)
            assert isinstance(failed, events_pb2.TrainingFailed)
            assert failed.stage == "load_data"
            assert "labelled rows" in failed.reason

            sets.path = training_set
            await send(good)  # replayed: must publish nothing new
            after = f"after-{uuid.uuid4().hex}"
            await send(after)
            _, next_trained = await outcomes.wait_for(after)
            assert isinstance(next_trained, events_pb2.ModelTrained)
            # Same partition (key = model), so the replay was handled before `after`.
            await asyncio.sleep(0.5)
            await outcomes.poll()
            assert [e.request_id for _, e in outcomes.seen].count(good) == 1
    finally:
        await service.stop()
