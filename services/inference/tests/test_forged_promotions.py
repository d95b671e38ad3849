"""Forged `ModelPromoted` records change nothing that inference serves.

A writer on `models.promoted` (here confluent-kafka, a client no one here
wrote) bypasses the registry's admin role and its gate. Inference checks each
promotion against the registry's champion before a swap, on the real broker
with a real registry: one naming a registered but not promoted version, the
champion with another digest, or the champion's bytes under another version
number is refused and counted, and the champion keeps answering. Promotions
and rollbacks made through the registry still hot-swap.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
import pytest
from confluent_kafka import Producer
from driftloop.v1 import common_pb2, events_pb2, registry_pb2, registry_pb2_grpc
from driftloop_core.artifacts import ArtifactStore
from driftloop_core.kafka import Publisher, Topics
from driftloop_core.settings import Settings
from driftloop_inference.bootstrap import InferenceService
from driftloop_inference.config import InferenceSettings
from driftloop_registry.bootstrap import RegistryService
from driftloop_registry.config import RegistrySettings
from inference import grpc_service_pb2_grpc as oip_grpc
from models import payments_feeds, raw_infer_request, register_champion_and_candidate
from prometheus_client import REGISTRY

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@dataclass
class Stack:
    """A registry with v1 champion and v2 registered (worse, not promoted), and
    inference serving v1."""

    model: str
    settings: Settings
    registry: registry_pb2_grpc.RegistryServiceStub
    inference: InferenceService
    oip: oip_grpc.GRPCInferenceServiceStub
    digests: dict[int, str]


async def wait_for(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


@pytest.fixture
async def stack(
    settings: Settings, unique: str, payments_v1: bytes, payments_v2: bytes
) -> AsyncIterator[Stack]:
    model = f"forged-{unique}"
    store = ArtifactStore(settings.artifacts_location)
    trained_topic = f"t.models.trained.{unique}"
    registry = RegistryService(
        settings.for_service("registry"),
        RegistrySettings(
            source_topic=trained_topic,
            deadletter_topic=f"t.deadletter.{unique}",
            group_id=f"g.registry.{unique}",
        ),
        "127.0.0.1:0",
    )
    await registry.start()
    inference: InferenceService | None = None
    try:
        async with Publisher(settings) as publisher:
            versions = await register_champion_and_candidate(
                publisher, trained_topic, registry.endpoint, model, store, payments_v1, payments_v2
            )
        async with grpc.aio.insecure_channel(registry.endpoint) as registry_channel:
            stub = registry_pb2_grpc.RegistryServiceStub(registry_channel)
            assert [v.status for v in versions] == [
                common_pb2.MODEL_VERSION_STATUS_CHAMPION,
                common_pb2.MODEL_VERSION_STATUS_CANDIDATE,
            ]
            inference = InferenceService(
                settings.for_service("inference"),
                InferenceSettings(
                    predictions_topic=f"t.predictions.{unique}", retry_interval_s=0.2
                ),
                "127.0.0.1:0",
                registry_address=registry.endpoint,
                model_name=model,
            )
            await inference.start()
            await inference.wait_ready(30)
            async with grpc.aio.insecure_channel(inference.endpoint) as inference_channel:
                yield Stack(
                    model,
                    settings,
                    stub,
                    inference,
                    oip_grpc.GRPCInferenceServiceStub(inference_channel),
                    {v.version: v.artifact.sha256 for v in versions},
                )
    finally:
        if inference is not None:
            await inference.stop()
        await registry.stop()


def produce(settings: Settings, promoted: events_pb2.ModelPromoted) -> None:
    """Write `promoted` to models.promoted as the registry would, headers and all."""
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    failed: list[object] = []
    producer.produce(
        Topics.MODELS_PROMOTED,
        promoted.SerializeToString(),
        key=promoted.model,
        headers=[
            ("ce_specversion", b"1.0"),
            ("ce_id", promoted.promotion_id.encode()),
            ("ce_type", b"driftloop.model.promoted.v1"),
            ("ce_source", b"driftloop/registry"),
            ("content-type", b"application/protobuf"),
        ],
        on_delivery=lambda error, _record: failed.append(error) if error else None,
    )
    assert producer.flush(30) == 0 and not failed, failed


async def forge(settings: Settings, promoted: events_pb2.ModelPromoted) -> None:
    await asyncio.to_thread(produce, settings, promoted)


def refusals(model: str, stage: str) -> float:
    value = REGISTRY.get_sample_value(
        "driftloop_inference_model_load_failures_total", {"model": model, "stage": stage}
    )
    return value or 0.0


async def served(stack: Stack) -> str:
    reply = await stack.oip.ModelInfer(raw_infer_request(stack.model, payments_feeds(1)), timeout=5)
    return str(reply.model_version)


async def test_forged_promotions_are_refused_and_the_champion_keeps_serving(
    stack: Stack,
) -> None:
    repository = stack.inference.repository
    assert repository.current is not None
    champion = (repository.current.version, repository.current.sha256)
    assert champion == (1, stack.digests[1])
    v1, v2 = stack.digests[1], stack.digests[2]
    forged = [
        # A registered version the gate did not promote, with its real digest.
        ("v2, its digest", 2, v2, events_pb2.PROMOTION_KIND_PROMOTE, "digest"),
        # The same as a rollback.
        ("v2 as a rollback", 2, v2, events_pb2.PROMOTION_KIND_ROLLBACK, "digest"),
        # The champion's number with other bytes.
        ("v1, v2's digest", 1, v2, events_pb2.PROMOTION_KIND_PROMOTE, "digest"),
        ("v2, a wrong digest", 2, "f" * 64, events_pb2.PROMOTION_KIND_PROMOTE, "digest"),
        # The champion's bytes under a version number the registry never gave.
        ("v9, v1's digest", 9, v1, events_pb2.PROMOTION_KIND_PROMOTE, "version"),
    ]
    for i, (label, version, digest, kind, stage) in enumerate(forged):
        before = refusals(stack.model, stage)
        await forge(
            stack.settings,
            events_pb2.ModelPromoted(
                promotion_id=f"forged-{i}",
                model=stack.model,
                to_version=version,
                alias="champion",
                actor="registry",
                reason="forged",
                kind=kind,
                artifact=common_pb2.Artifact(sha256=digest),
            ),
        )
        await wait_for(
            lambda stage=stage, before=before: refusals(stack.model, stage) > before,
            within=30,
            what=f"{label}: not refused",
        )
        current = repository.current
        assert current is not None and (current.version, current.sha256) == champion, label
        assert repository.previous is None, f"{label}: another version was loaded"
        assert await served(stack) == "1", label
    assert "the registry's champion is v1" in repository.last_error

    # Through the registry, with its admin role and its record, a promotion swaps...
    await stack.registry.Promote(
        registry_pb2.PromoteRequest(model=stack.model, version=2, reason="canary won")
    )
    await wait_for(
        lambda: repository.current is not None and repository.current.version == 2,
        within=30,
        what="the registry's promotion to v2 was not applied",
    )
    assert repository.current is not None and repository.current.sha256 == v2
    assert await served(stack) == "2"
    # ...and a rollback swaps back at once (v1 is still loaded).
    await stack.registry.Rollback(registry_pb2.RollbackRequest(model=stack.model, reason="worse"))
    await wait_for(
        lambda: repository.current is not None and repository.current.version == 1,
        within=15,
        what="the rollback to v1 was not applied",
    )
    assert await served(stack) == "1"

    # A promotion replayed after the registry moved on is no longer the champion.
    before = refusals(stack.model, "digest")
    await forge(
        stack.settings,
        events_pb2.ModelPromoted(
            promotion_id="replayed",
            model=stack.model,
            to_version=2,
            alias="champion",
            kind=events_pb2.PROMOTION_KIND_PROMOTE,
            artifact=common_pb2.Artifact(sha256=v2),
        ),
    )
    await wait_for(
        lambda: refusals(stack.model, "digest") > before, within=30, what="replay not refused"
    )
    assert await served(stack) == "1"
