"""Model lifecycle against the real registry and broker: champion at start, hot
swap under continuous load, instant rollback, an unverifiable artifact refused."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from driftloop.v1 import common_pb2, events_pb2, registry_pb2, registry_pb2_grpc
from driftloop_core.artifacts import ArtifactStore
from driftloop_core.kafka import Publisher
from driftloop_core.settings import Settings
from driftloop_inference.bootstrap import InferenceService
from driftloop_inference.config import InferenceSettings
from driftloop_inference.metrics import MODEL_LOAD_FAILURES
from driftloop_registry.bootstrap import RegistryService
from driftloop_registry.config import RegistrySettings
from inference import grpc_service_pb2_grpc as oip_grpc
from models import model_trained, payments_feeds, raw_infer_request

pytestmark = pytest.mark.integration


async def until(check: Any, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_hot_swap_under_load_rollback_and_refused_artifact(
    settings: Settings, unique: str, payments_v1: bytes, payments_v2: bytes
) -> None:
    model = f"payments-{unique}"
    store = ArtifactStore(settings.artifacts_location)
    registry = RegistryService(
        settings.for_service("registry"),
        RegistrySettings(
            source_topic=f"t.models.trained.{unique}",
            deadletter_topic=f"t.deadletter.{unique}",
            group_id=f"g.registry.{unique}",
        ),
        "127.0.0.1:0",
    )
    await registry.start()
    publisher = Publisher(settings)
    await publisher.start()
    service: InferenceService | None = None
    try:
        await publisher.publish(
            f"t.models.trained.{unique}",
            model_trained(model, store.put(payments_v1), "run-1", 0.80).SerializeToString(),
            key=model,
            ce_type="driftloop.model.trained.v1",
        )
        async with grpc.aio.insecure_channel(registry.endpoint) as channel:
            reg = registry_pb2_grpc.RegistryServiceStub(channel)

            async def champion() -> int:
                try:
                    reply = await reg.GetChampion(registry_pb2.GetChampionRequest(model=model))
                except grpc.aio.AioRpcError:
                    return 0
                return reply.model_version.version

            deadline = time.monotonic() + 30
            while await champion() != 1:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)

            service = InferenceService(
                settings.for_service("inference"),
                InferenceSettings(
                    predictions_topic=f"t.predictions.{unique}", retry_interval_s=0.2
                ),
                "127.0.0.1:0",
                registry_address=registry.endpoint,
                model_name=model,
            )
            await service.start()
            await service.wait_ready(30)
            assert service.repository.current is not None
            assert service.repository.current.version == 1

            feeds = {name: array[:1] for name, array in payments_feeds(3).items()}
            doubled = {k: np.concatenate((v, v)) for k, v in feeds.items()}
            expected = {
                "1": ort.InferenceSession(payments_v1).run(None, doubled)[1][:1],
                "2": ort.InferenceSession(payments_v2).run(None, doubled)[1][:1],
            }
            request = raw_infer_request(model, feeds)
            seen: list[str] = []
            failures: list[str] = []
            stop = asyncio.Event()

            async def load(stub: oip_grpc.GRPCInferenceServiceStub) -> None:
                while not stop.is_set():
                    try:
                        reply = await stub.ModelInfer(request, timeout=10)
                    except grpc.aio.AioRpcError as error:
                        failures.append(f"{error.code().name}: {error.details()}")
                        continue
                    probs = np.frombuffer(reply.raw_output_contents[1], "<f4").reshape(1, 2)
                    np.testing.assert_array_equal(probs, expected[reply.model_version])
                    seen.append(reply.model_version)

            async with grpc.aio.insecure_channel(service.endpoint) as inference_channel:
                stub = oip_grpc.GRPCInferenceServiceStub(inference_channel)
                workers = [asyncio.create_task(load(stub)) for _ in range(4)]
                await asyncio.sleep(0.3)
                # A better challenger: the registry promotes it, inference swaps.
                await publisher.publish(
                    f"t.models.trained.{unique}",
                    model_trained(
                        model,
                        store.put(payments_v2),
                        "run-2",
                        0.90,
                        champion_metrics={"roc_auc": 0.80},
                        champion_version=1,
                    ).SerializeToString(),
                    key=model,
                    ce_type="driftloop.model.trained.v1",
                )
                await until(lambda: service.repository.current.version == 2)
                await asyncio.sleep(0.3)
                stop.set()
                await asyncio.gather(*workers)
            assert not failures
            first_new = seen.index("2")
            assert set(seen[first_new:]) == {"2"}
            assert seen[:first_new] and set(seen[:first_new]) == {"1"}
            assert service.repository.previous is not None
            assert service.repository.previous.version == 1

            # Rollback: the previous version is still loaded, the swap is instant.
            await reg.Rollback(registry_pb2.RollbackRequest(model=model, reason="test"))
            await until(lambda: service.repository.current.version == 1, within=15)

            # A promotion whose digest does not match what the registry serves
            # is refused; the current version keeps serving.
            failed = MODEL_LOAD_FAILURES.labels(model, "digest")._value.get()
            bogus = events_pb2.ModelPromoted(
                promotion_id=f"bogus-{unique}",
                model=model,
                to_version=2,
                alias="champion",
                artifact=common_pb2.Artifact(sha256="0" * 64),
            )
            await publisher.publish_event(bogus, key=model)
            await until(
                lambda: MODEL_LOAD_FAILURES.labels(model, "digest")._value.get() > failed,
                within=15,
            )
            assert service.repository.current.version == 1
            async with grpc.aio.insecure_channel(service.endpoint) as inference_channel:
                reply = await oip_grpc.GRPCInferenceServiceStub(inference_channel).ModelInfer(
                    request
                )
            assert reply.model_version == "1"
    finally:
        if service is not None:
            await service.stop()
        await publisher.stop()
        await registry.stop()
