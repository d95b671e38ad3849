"""The artifact size limit (`DRIFTLOOP_ARTIFACTS_MAX_BYTES`) between services: the
registry dead-letters a `ModelTrained` whose artifact is too large and goes on
with the next one, and inference refuses to download one before holding it whole.
A digest is a location in the store, so one that is a path (`../../etc/passwd`,
`/dev/zero`) is refused before anything is read."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc.aio
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confluent_kafka import Producer
from driftloop.v1 import common_pb2, events_pb2, registry_pb2, registry_pb2_grpc
from driftloop_core.artifacts import ArtifactStore
from driftloop_core.settings import Settings
from driftloop_inference.adapters.registry import RegistryClient
from driftloop_inference.model import ModelLoadError
from driftloop_registry.bootstrap import RegistryService
from driftloop_registry.config import RegistrySettings
from driftloop_testing import collect
from onnx import TensorProto, helper

pytestmark = pytest.mark.integration


def onnx_model(padding: int = 0) -> bytes:
    """A real one-node ONNX model; `padding` bytes of doc string make it larger."""
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], doc_string="p" * padding
    )
    return model.SerializeToString()


SMALL = onnx_model()
LIMIT = len(SMALL) + 100
LARGE = onnx_model(padding=500)
assert len(SMALL) < LIMIT < len(LARGE)


@pytest.fixture
async def registry(settings: Settings, unique: str) -> AsyncIterator[RegistryService]:
    """The real registry, allowed artifacts up to LIMIT bytes."""
    config = RegistrySettings(
        source_topic=f"t.models.trained.{unique}",
        deadletter_topic=f"t.deadletter.{unique}",
        group_id=f"g.registry.{unique}",
    )
    limited = settings.model_copy(update={"artifacts_max_bytes": LIMIT})
    service = RegistryService(limited.for_service("registry"), config, "127.0.0.1:0")
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


def trained(model: str, artifact: object, run: str) -> events_pb2.ModelTrained:
    return events_pb2.ModelTrained(
        request_id=run,
        model=model,
        artifact=artifact,
        metrics={"roc_auc": 0.8},
        code_version="test",
        feature_names=["x"],
        eval_rows=10,
    )


async def first_record(settings: Settings, topic: str, within_s: float = 30) -> bytes:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        async with asyncio.timeout(within_s):
            while True:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    if records:
                        value: bytes = records[0].value
                        return value
    finally:
        await consumer.stop()


async def test_registry_and_inference_refuse_artifacts_over_the_limit(
    registry: RegistryService, settings: Settings, unique: str
) -> None:
    model = f"limits-{unique}"
    # The trainer side stores with a larger limit than the registry's.
    store = ArtifactStore(settings.artifacts_location, max_bytes=10 * LIMIT)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    await producer.start()
    try:
        for run, data in (("run-large", LARGE), ("run-small", SMALL)):
            message = trained(model, store.put(data), run)
            await producer.send_and_wait(
                registry.config.source_topic,
                message.SerializeToString(),
                key=model.encode(),
                headers=[("ce_id", run.encode()), ("ce_type", b"driftloop.model.trained.v1")],
            )
    finally:
        await producer.stop()

    letter = events_pb2.DeadLetter.FromString(
        await first_record(settings, registry.config.deadletter_topic)
    )
    assert (letter.field, letter.rule) == ("artifact.size_bytes", "size")
    assert f"is {len(LARGE)} bytes, more than the {LIMIT} allowed" in letter.reason
    assert "DRIFTLOOP_ARTIFACTS_MAX_BYTES" in letter.reason

    # The record behind it was registered: the partition moved on.
    async with grpc.aio.insecure_channel(registry.endpoint) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        deadline = time.monotonic() + 30
        while True:
            reply = await stub.ListVersions(registry_pb2.ListVersionsRequest(model=model))
            if reply.versions or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    assert [v.version for v in reply.versions] == [1]
    assert reply.versions[0].artifact.size_bytes == len(SMALL)

    # Inference downloads it within its limit, and refuses it below.
    roomy = RegistryClient(settings, registry.endpoint, timeout_s=10)
    strict = RegistryClient(
        settings.model_copy(update={"artifacts_max_bytes": len(SMALL) - 1}),
        registry.endpoint,
        timeout_s=10,
    )
    try:
        data, digest = await roomy.download(model, 1)
        assert data == SMALL and digest == reply.versions[0].artifact.sha256
        with pytest.raises(ModelLoadError) as refused:
            await strict.download(model, 1)
    finally:
        await roomy.close()
        await strict.close()
    assert refused.value.stage == "size"
    assert str(refused.value) == (
        f"model {model} v1: the artifact is {len(SMALL)} bytes, more than the "
        f"{len(SMALL) - 1} allowed (DRIFTLOOP_ARTIFACTS_MAX_BYTES)"
    )


def produce(settings: Settings, topic: str, records: list[tuple[str, bytes]]) -> None:
    """Write (key, value) records as any librdkafka client may, and wait for the acks."""
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    failed: list[object] = []
    for key, value in records:
        producer.produce(
            topic,
            value,
            key=key,
            on_delivery=lambda error, _record: failed.append(error) if error else None,
        )
    assert producer.flush(30) == 0 and not failed, failed


@pytest.mark.timeout(90)
async def test_a_path_in_place_of_a_digest_is_dead_lettered_without_being_read(
    registry: RegistryService, settings: Settings, unique: str
) -> None:
    model = f"traversal-{unique}"
    good = ArtifactStore(settings.artifacts_location).put(SMALL)
    # Before the fix the first was read (its real digest went into the dead
    # letter) and the second never finished reading; now the reason shows
    # only what was sent.
    paths = ["../../../../etc/passwd", "/dev/zero", "../" * 12 + "dev/zero"]
    records = [
        trained(model, common_pb2.Artifact(uri=path, sha256=path, size_bytes=10), f"run-{i}")
        for i, path in enumerate(paths)
    ]
    records.append(trained(model, good, "run-good"))
    await asyncio.to_thread(
        produce,
        settings,
        registry.config.source_topic,
        [(model, message.SerializeToString()) for message in records],
    )

    found = await collect(settings, registry.config.deadletter_topic, at_least=len(paths))
    letters = [events_pb2.DeadLetter.FromString(record.value) for record in found]
    assert [(letter.field, letter.rule) for letter in letters] == [
        ("artifact.sha256", "format")
    ] * len(paths)
    for letter, path in zip(letters, paths, strict=True):
        assert letter.reason == (
            "artifact.sha256: must be 64 lowercase hex characters (a sha256), "
            f"got {len(path)} characters: {path!r}"
        )

    # The good record behind them was registered: the partition moved on.
    async with grpc.aio.insecure_channel(registry.endpoint) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        deadline = time.monotonic() + 30
        while True:
            reply = await stub.ListVersions(registry_pb2.ListVersionsRequest(model=model))
            if reply.versions or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    assert [(v.version, v.request_id) for v in reply.versions] == [(1, "run-good")]
