"""`driftloop train` against the real broker and a running trainer: it waits for the
registered version, or reports the failed stage with exit code 1."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import typer
from aiokafka import AIOKafkaConsumer, TopicPartition
from driftloop.v1 import common_pb2, events_pb2
from driftloop_cli.commands.train import train
from driftloop_core.broker import EmbeddedBroker
from driftloop_core.featureset import FeatureSet
from driftloop_core.kafka import Publisher, Topics, default_topic_specs, ensure_topics
from driftloop_core.settings import Settings
from driftloop_trainer.bootstrap import build
from driftloop_trainer.ports import FileTrainingSets, NoChampion, TrainingSet
from driftloop_trainer.training import TrainingConfig
from typer.testing import CliRunner

pytestmark = pytest.mark.integration

FAST = TrainingConfig(candidates=({"max_iter": 20, "max_leaf_nodes": 7},))


class SwitchableTrainingSets:
    def __init__(self, path: Path) -> None:
        self.path = path

    async def training_set(self, model: str, window: common_pb2.DataWindow) -> TrainingSet:
        return await FileTrainingSets(self.path).training_set(model, window)


async def fake_registry(settings: Settings, ready: asyncio.Event) -> None:
    """Registers every ModelTrained it sees as version 7, champion."""
    consumer = AIOKafkaConsumer(**settings.kafka.client_options(), group_id=None)
    await consumer.start()
    try:
        await consumer.topics()
        tps = [
            TopicPartition(Topics.MODELS_TRAINED, p)
            for p in consumer.partitions_for_topic(Topics.MODELS_TRAINED) or ()
        ]
        consumer.assign(tps)
        for tp, offset in (await consumer.end_offsets(tps)).items():
            consumer.seek(tp, offset)
        ready.set()
        async with Publisher(settings) as publisher:
            while True:
                for messages in (await consumer.getmany(timeout_ms=200)).values():
                    for message in messages:
                        trained = events_pb2.ModelTrained.FromString(message.value)
                        registered = events_pb2.ModelRegistered(
                            model=trained.model,
                            version=7,
                            status=common_pb2.MODEL_VERSION_STATUS_CHAMPION,
                            reason="no champion",
                            request_id=trained.request_id,
                            artifact=trained.artifact,
                            metrics=trained.metrics,
                        )
                        await publisher.publish_event(registered, key=trained.model)
    finally:
        await consumer.stop()


@pytest.fixture
async def registry(settings: Settings) -> AsyncIterator[None]:
    await ensure_topics(settings.kafka, default_topic_specs(settings.kafka))
    ready = asyncio.Event()
    task = asyncio.create_task(fake_registry(settings, ready))
    await asyncio.wait_for(ready.wait(), 20)
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_train_waits_for_the_version_or_reports_the_failed_stage(
    settings: Settings,
    broker: EmbeddedBroker,
    unique: str,
    featureset: FeatureSet,
    training_set: Path,
    empty_training_set: Path,
    registry: None,
) -> None:
    sets = SwitchableTrainingSets(training_set)
    service = build(
        settings,
        featureset,
        training_sets=sets,
        champions=NoChampion(),
        config=FAST,
        grpc_address="127.0.0.1:0",
        group_id=f"g.trainer.{unique}",
        create_topics=False,
    )
    await service.start()
    app = typer.Typer()
    app.command()(train)
    env = {"DRIFTLOOP_KAFKA_BOOTSTRAP": broker.bootstrap, "DRIFTLOOP_HOME": str(settings.home)}

    def run(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(app, list(args), env=env)
        # The trainer's own log lines share this process's stdout; the
        # command's answer is the last line.
        return result.exit_code, result.stdout.strip().splitlines()[-1]

    try:
        code, out = await asyncio.to_thread(
            run, "payments", "--reason", "cli test", "--timeout", "60", "--json"
        )
        assert code == 0, out
        outcome = json.loads(out)
        assert outcome["outcome"] == "registered"
        assert outcome["version"] == 7
        assert outcome["status"] == "MODEL_VERSION_STATUS_CHAMPION"
        assert outcome["metrics"]["roc_auc"] > 0.8

        sets.path = empty_training_set
        code, out = await asyncio.to_thread(run, "payments", "--timeout", "60", "--json")
        assert code == 1, out
        outcome = json.loads(out)
        assert outcome["outcome"] == "failed"
        assert outcome["stage"] == "load_data"

        code, out = await asyncio.to_thread(run, "payments", "--no-wait")
        assert code == 0
        assert "request id" in out
    finally:
        await service.stop()
