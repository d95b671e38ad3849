"""What the trainer accepts, on the real broker: a `TrainingRequested` that can
never run, written by any Kafka client (confluent-kafka here), is dead-lettered
naming its field and rule, and the requests behind it still run. The champion
it downloads from a real registry is bounded by `DRIFTLOOP_ARTIFACTS_MAX_BYTES`."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer
from driftloop.v1 import events_pb2
from driftloop_core.artifacts import ArtifactStore
from driftloop_core.featureset import FeatureSet
from driftloop_core.kafka import Publisher, TopicSpec, ensure_topics
from driftloop_core.settings import Settings
from driftloop_registry.bootstrap import RegistryService
from driftloop_registry.config import RegistrySettings
from driftloop_testing import collect, model_trained
from driftloop_trainer.adapters.grpc_clients import RegistryChampions
from driftloop_trainer.bootstrap import build
from driftloop_trainer.ports import FileTrainingSets, NoChampion, SourceError
from onnx import TensorProto, helper

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def request(request_id: str, **fields: object) -> events_pb2.TrainingRequested:
    message = events_pb2.TrainingRequested(
        request_id=request_id,
        model="payments",
        reason="validation test",
        trigger=events_pb2.TRAINING_TRIGGER_MANUAL,
    )
    for name, value in fields.items():
        setattr(message, name, value)
    return message


def produce(settings: Settings, topic: str, messages: list[events_pb2.TrainingRequested]) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    failed: list[object] = []
    for message in messages:
        producer.produce(
            topic,
            message.SerializeToString(),
            key="payments",
            on_delivery=lambda error, _record: failed.append(error) if error else None,
        )
    assert producer.flush(30) == 0 and not failed, failed


async def test_requests_that_can_never_run_are_dead_lettered_by_field_and_rule(
    settings: Settings, unique: str, featureset: FeatureSet, tmp_path: Path
) -> None:
    topic, deadletters = f"t.training.{unique}", f"t.deadletter.{unique}"
    await ensure_topics(settings.kafka, [TopicSpec(topic, 2), TopicSpec(deadletters, 2)])
    service = build(
        settings,
        featureset,
        training_sets=FileTrainingSets(tmp_path / "no-such-set.parquet"),
        champions=NoChampion(),
        grpc_address="127.0.0.1:0",
        topic=topic,
        group_id=f"g.trainer.{unique}",
        deadletter_topic=deadletters,
        create_topics=False,
    )
    past_year_9999 = request("r-time")
    past_year_9999.requested_at.seconds = 253_402_300_800
    bad_window = request("r-window")
    bad_window.window.time_range.start.nanos = -1
    bad = [
        (request(""), "request_id", "required"),
        (request("r" * 201), "request_id", "length"),
        (request("r-model", model="m" * 257), "model", "length"),
        (request("r-reason", reason="x" * 4097), "reason", "length"),
        (request("r-by", requested_by="\U0001f600" * 65), "requested_by", "length"),
        (request("r-trigger", trigger=99), "trigger", "enum"),
        (past_year_9999, "requested_at", "timestamp"),
        (bad_window, "window.time_range.start", "timestamp"),
    ]
    valid = f"valid-{unique}"
    await service.start()
    try:
        await asyncio.to_thread(
            produce, settings, topic, [message for message, _, _ in bad] + [request(valid)]
        )
        records = await collect(settings, deadletters, at_least=len(bad), timeout_s=60)
        letters = [events_pb2.DeadLetter.FromString(record.value) for record in records]
        assert [(letter.field, letter.rule) for letter in letters] == [
            (field, rule) for _, field, rule in bad
        ]
        assert letters[1].reason == "request_id: at most 200 bytes, got 201"
        assert letters[5].reason == "trigger: 99 is not a TrainingTrigger"
        # The valid request behind them ran (and failed: there is no training set).
        deadline = time.monotonic() + 30
        while service.ledger.outcome(valid) is None:
            assert time.monotonic() < deadline, "the valid request was not run"
            await asyncio.sleep(0.1)
        assert service.ledger.outcome(valid) == "failed"
        assert all(service.ledger.outcome(m.request_id) is None for m, _, _ in bad[1:])
    finally:
        await service.stop()


def padded_onnx(padding: int) -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], doc_string="p" * padding
    )
    return model.SerializeToString()


async def test_a_champion_over_the_size_limit_is_not_downloaded(
    settings: Settings, unique: str
) -> None:
    model = f"bounded-{unique}"
    data = padded_onnx(200_000)
    source = f"t.models.trained.{unique}"
    registry = RegistryService(
        settings.for_service("registry"),
        RegistrySettings(
            source_topic=source,
            deadletter_topic=f"t.deadletter.{unique}",
            group_id=f"g.registry.{unique}",
        ),
        "127.0.0.1:0",
    )
    await registry.start()
    try:
        artifact = ArtifactStore(settings.artifacts_location).put(data)
        async with Publisher(settings) as publisher:
            await publisher.publish(
                source,
                model_trained(model, artifact, "run-1", 0.8).SerializeToString(),
                key=model,
                ce_type="driftloop.model.trained.v1",
            )
        endpoints = settings.endpoints.model_copy(update={"registry": registry.endpoint})

        def champions(limit: int) -> RegistryChampions:
            return RegistryChampions(
                settings.model_copy(update={"artifacts_max_bytes": limit, "endpoints": endpoints})
            )

        deadline = time.monotonic() + 30
        while (lookup := await champions(len(data)).champion(model)).champion is None:
            assert time.monotonic() < deadline, lookup.note
            await asyncio.sleep(0.2)
        assert lookup.champion is not None and lookup.champion.onnx_bytes == data

        with pytest.raises(SourceError) as refused:
            await champions(len(data) - 1).champion(model)
        assert str(refused.value) == (
            f"champion v1 artifact: {len(data)} bytes, more than the {len(data) - 1} "
            "allowed (DRIFTLOOP_ARTIFACTS_MAX_BYTES)"
        )
    finally:
        await registry.stop()
