"""A promotion made just after the embedded broker restarts empty reaches inference.

Tansu keeps topics and groups in memory: after a restart the promotions consumer
rejoins a group the broker has never seen and starts from the latest offsets,
so a ModelPromoted published before its new assignment is behind it. Inference
must still end up serving the registry's champion, without a restart, and when
the registry does not answer at that moment, once it does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from driftloop.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from driftloop_core.artifacts import ArtifactStore
from driftloop_core.broker import EmbeddedBroker, free_port
from driftloop_core.kafka import Publisher, Topics, default_topic_specs, ensure_topics
from driftloop_core.settings import Settings, load_settings
from driftloop_inference.bootstrap import InferenceService
from driftloop_inference.config import InferenceSettings
from driftloop_registry.bootstrap import RegistryService
from driftloop_registry.config import RegistrySettings
from inference import grpc_service_pb2_grpc as oip_grpc
from models import model_trained, payments_feeds, raw_infer_request
from prometheus_client import REGISTRY

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

MODEL = "payments"


def trained(artifact: common_pb2.Artifact, run: str, auc: float, **extra: Any) -> bytes:
    return model_trained(MODEL, artifact, run, auc, **extra).SerializeToString()


async def served_version(stub: oip_grpc.GRPCInferenceServiceStub) -> str:
    reply = await stub.ModelInfer(raw_infer_request(MODEL, payments_feeds(1)), timeout=5)
    return str(reply.model_version)


async def until_served(
    stub: oip_grpc.GRPCInferenceServiceStub, version: str, within: float
) -> None:
    """Until ModelInfer answers with `version`; fails after `within` seconds."""
    deadline = time.monotonic() + within
    while (seen := await served_version(stub)) != version:
        assert time.monotonic() < deadline, f"still serving v{seen}, not v{version}"
        await asyncio.sleep(0.1)


async def restart_empty(broker: EmbeddedBroker, settings: Settings) -> None:
    """SIGKILL the broker, start a new, empty one on the same port, create the topics."""
    assert broker.pid is not None
    os.kill(broker.pid, signal.SIGKILL)
    await broker.exited()
    broker.start()
    await broker.wait_ready()
    await ensure_topics(settings.kafka, default_topic_specs(settings.kafka))


@dataclass
class Stack:
    """A private broker, a registry with v1 champion and v2 registered, and an
    inference service serving v1."""

    broker: EmbeddedBroker
    settings: Settings
    registry_address: str
    registry: registry_pb2_grpc.RegistryServiceStub
    inference: oip_grpc.GRPCInferenceServiceStub

    def registry_service(self) -> RegistryService:
        return RegistryService(
            self.settings.for_service("registry"), RegistrySettings(), self.registry_address
        )

    async def promote(self, version: int) -> None:
        promoted = await self.registry.Promote(
            registry_pb2.PromoteRequest(
                model=MODEL, version=version, reason="after the restart", actor="test"
            ),
            timeout=20,
        )
        assert promoted.promotion.to_version == version


@contextlib.asynccontextmanager
async def stack(
    tmp_path: Path, payments_v1: bytes, payments_v2: bytes
) -> AsyncIterator[tuple[Stack, list[RegistryService]]]:
    """The stack, and the running registry (a list: a test may replace it)."""
    os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    async with EmbeddedBroker(free_port(), log_file=tmp_path / "broker.log") as broker:
        settings = load_settings(
            home=tmp_path / "home", kafka_bootstrap=broker.bootstrap, service_name="test"
        )
        registry_address = f"127.0.0.1:{free_port()}"
        registries = [
            RegistryService(settings.for_service("registry"), RegistrySettings(), registry_address)
        ]
        inference: InferenceService | None = None
        try:
            await registries[0].start()
            await register_v1_champion_and_v2(settings, payments_v1, payments_v2)
            async with grpc.aio.insecure_channel(registry_address) as channel:
                listed = registry_pb2_grpc.RegistryServiceStub(channel).ListVersions
                deadline = time.monotonic() + 20
                while (
                    len((await listed(registry_pb2.ListVersionsRequest(model=MODEL))).versions) < 2
                ):
                    assert time.monotonic() < deadline, "v1 and v2 not registered"
                    await asyncio.sleep(0.1)
            inference = InferenceService(
                settings.for_service("inference"),
                InferenceSettings(model_name=MODEL, retry_interval_s=0.2, registry_timeout_s=2),
                "127.0.0.1:0",
                registry_address=registry_address,
            )
            await inference.start()
            await inference.wait_ready(20)
            async with (
                grpc.aio.insecure_channel(registry_address) as registry_channel,
                grpc.aio.insecure_channel(inference.endpoint) as inference_channel,
            ):
                running = Stack(
                    broker,
                    settings,
                    registry_address,
                    registry_pb2_grpc.RegistryServiceStub(registry_channel),
                    oip_grpc.GRPCInferenceServiceStub(inference_channel),
                )
                assert await served_version(running.inference) == "1"
                yield running, registries
        finally:
            if inference is not None:
                await inference.stop()
            for registry in registries:
                await registry.stop()


async def register_v1_champion_and_v2(
    settings: Settings, payments_v1: bytes, payments_v2: bytes
) -> None:
    """v1 becomes champion; v2 is registered but not promoted (worse AUC)."""
    store = ArtifactStore(settings.artifacts_location)
    async with Publisher(settings) as publisher:
        await publisher.publish(
            Topics.MODELS_TRAINED,
            trained(store.put(payments_v1), "run-1", 0.80),
            key=MODEL,
            ce_type="driftloop.model.trained.v1",
        )
        await publisher.publish(
            Topics.MODELS_TRAINED,
            trained(
                store.put(payments_v2),
                "run-2",
                0.70,
                champion_metrics={"roc_auc": 0.80},
                champion_version=1,
            ),
            key=MODEL,
            ce_type="driftloop.model.trained.v1",
        )


def catch_ups(outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "driftloop_inference_promotion_catch_ups_total", {"model": MODEL, "outcome": outcome}
    )
    return value or 0.0


async def test_promotion_published_as_the_broker_returns_is_served(
    tmp_path: Path, payments_v1: bytes, payments_v2: bytes
) -> None:
    async with stack(tmp_path, payments_v1, payments_v2) as (running, _):
        await restart_empty(running.broker, running.settings)
        # Published at once, seconds before inference's consumer has its new assignment.
        await running.promote(2)
        await until_served(running.inference, "2", within=20)
        # And it stays there: nothing replayed afterwards rolls it back.
        await asyncio.sleep(1.0)
        assert await served_version(running.inference) == "2"


async def test_registry_down_at_the_rejoin_is_asked_again(
    tmp_path: Path, payments_v1: bytes, payments_v2: bytes
) -> None:
    async with stack(tmp_path, payments_v1, payments_v2) as (running, registries):
        unavailable = catch_ups("registry_unavailable")
        await restart_empty(running.broker, running.settings)
        await running.promote(2)
        # The registry goes down before inference's consumer rejoins (about 5 s
        # on the embedded broker): the catch-up finds it unreachable.
        await registries.pop().stop()
        deadline = time.monotonic() + 20
        while catch_ups("registry_unavailable") == unavailable:
            assert time.monotonic() < deadline, "no catch-up attempt while the registry was down"
            await asyncio.sleep(0.1)
        assert await served_version(running.inference) == "1", "v1 keeps serving meanwhile"
        # Back on the same address, same database: the catch-up asked again finds v2.
        registries.append(running.registry_service())
        await registries[-1].start()
        await until_served(running.inference, "2", within=20)
