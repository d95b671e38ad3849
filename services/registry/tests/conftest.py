"""Registry fixtures: a real registry service on the session broker, tiny ONNX
models, and readers for the topics it writes.

Each test gets its own `models.trained` and dead-letter topics, consumer group
and model name; `models.registered` and `models.promoted` are shared, so
readers keep only the records keyed by the test's model.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import onnx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from driftloop.v1 import common_pb2, events_pb2
from driftloop_core.artifacts import ArtifactStore
from driftloop_core.settings import Settings
from driftloop_registry.bootstrap import RegistryService
from driftloop_registry.config import RegistrySettings
from google.protobuf.message import Message
from onnx import TensorProto, helper
from pydantic import SecretStr

TOKEN = "s3cret-admin-token"
M = TypeVar("M", bound=Message)


def tiny_onnx(scale: float = 1.0) -> bytes:
    """A real one-node ONNX graph, `probabilities = features * scale`;
    `scale` gives each model distinct bytes."""
    weight = helper.make_tensor("scale", TensorProto.FLOAT, [1], [scale])
    node = helper.make_node("Mul", ["features", "scale"], ["probabilities"])
    graph = helper.make_graph(
        [node],
        "tiny",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture
def model_name(unique: str) -> str:
    return f"payments-{unique}"


@pytest.fixture
def admin_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"admin_token": SecretStr(TOKEN)})


@pytest.fixture
def config(unique: str) -> RegistrySettings:
    return RegistrySettings(
        source_topic=f"t.models.trained.{unique}",
        deadletter_topic=f"t.deadletter.{unique}",
        group_id=f"g.registry.{unique}",
        chunk_size=1024,
    )


@pytest.fixture
async def service(
    admin_settings: Settings, config: RegistrySettings
) -> AsyncIterator[RegistryService]:
    running = RegistryService(admin_settings.for_service("registry"), config, "127.0.0.1:0")
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
def artifacts(admin_settings: Settings) -> ArtifactStore:
    return ArtifactStore(admin_settings.artifacts_location)


@pytest.fixture
def make_trained(
    artifacts: ArtifactStore, model_name: str
) -> Callable[..., events_pb2.ModelTrained]:
    def make(
        request_id: str,
        auc: float,
        *,
        champion_auc: float | None = None,
        champion_version: int | None = None,
        scale: float = 1.0,
    ) -> events_pb2.ModelTrained:
        artifact = artifacts.put(tiny_onnx(scale))
        message = events_pb2.ModelTrained(
            request_id=request_id,
            model=model_name,
            artifact=artifact,
            signature=common_pb2.ModelSignature(
                inputs=[common_pb2.TensorSpec(name="features", datatype="FP32", shape=[-1, 2])],
                outputs=[
                    common_pb2.TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 2])
                ],
            ),
            metrics={"roc_auc": auc, "accuracy": 0.9},
            dataset=common_pb2.Dataset(uri="/tmp/train.parquet", sha256="d" * 64, row_count=500),
            params={"max_depth": "4"},
            code_version="test",
            feature_names=["amount", "hour"],
            algorithm="hist_gradient_boosting",
            eval_rows=100,
        )
        if champion_auc is not None:
            message.champion_metrics["roc_auc"] = champion_auc
        if champion_version is not None:
            message.champion_version = champion_version
        return message

    return make


@pytest.fixture
async def send_trained(
    admin_settings: Settings, config: RegistrySettings
) -> AsyncIterator[Callable[[events_pb2.ModelTrained], Awaitable[None]]]:
    producer = AIOKafkaProducer(bootstrap_servers=admin_settings.kafka.bootstrap_servers)
    await producer.start()

    async def send(message: events_pb2.ModelTrained) -> None:
        await producer.send_and_wait(
            config.source_topic,
            message.SerializeToString(),
            key=message.model.encode(),
            headers=[
                ("ce_id", f"trained-{message.request_id}".encode()),
                ("ce_type", b"driftloop.model.trained.v1"),
            ],
        )

    try:
        yield send
    finally:
        await producer.stop()


async def read_topic(
    settings: Settings, topic: str, key: str, kind: type[M], *, count: int, within: float = 15.0
) -> list[tuple[dict[str, bytes], M]]:
    """Records keyed `key` on `topic`, from the start, once at least `count` arrived
    (then a short pause to catch any extra ones)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers)
    await consumer.start()
    found: list[tuple[dict[str, bytes], M]] = []
    try:
        partitions = [
            TopicPartition(topic, p) for p in sorted(await consumer_partitions(consumer, topic))
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + within
        settle: float | None = None
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    if record.key == key.encode():
                        found.append((dict(record.headers or ()), kind.FromString(record.value)))
            if len(found) >= count:
                settle = settle or time.monotonic() + 0.5
                if time.monotonic() >= settle:
                    break
        return found
    finally:
        await consumer.stop()


async def consumer_partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    for _ in range(50):
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return set(partitions)
        await consumer.force_metadata_update()
        await asyncio.sleep(0.1)
    raise AssertionError(f"topic {topic} has no partitions")


async def eventually(check: Callable[[], Awaitable[Any]], within: float = 20.0) -> Any:
    """The first truthy result of `check`, polled for `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.2)


@pytest.fixture
def read_events() -> Callable[..., Awaitable[list[tuple[dict[str, bytes], Any]]]]:
    return read_topic


@pytest.fixture
def wait_for() -> Callable[..., Awaitable[Any]]:
    return eventually


@pytest.fixture
def onnx_bytes() -> Callable[[float], bytes]:
    return tiny_onnx
