"""Rollouts: while a candidate is on trial, Predict scores it in the champion's
shadow, publishes its answer marked `shadow`, and never returns it.

Everything is real: the embedded broker, the registry service in this process
(v1 its champion, v2 registered beside it and not promoted, as the registry's
gate leaves a worse candidate), the ONNX models of `models.py`, and a stand-in
feature store for the online aggregates. The candidate's bytes come the way a
promotion's do: inference downloads v2 from the registry's `DownloadArtifact`
and checks it against the digest in the `ModelRolloutStarted`, which the test
publishes with a real `Publisher.publish_event` on `models.rollouts`, as the
registry will. v1 (`payments_onnx(c=1.0)`) and v2 (`c=0.01`) answer different
probabilities for the same features, so who answered is seen in the numbers.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from driftloop.v1 import (
    common_pb2,
    events_pb2,
    predictor_pb2,
    predictor_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from driftloop_core.artifacts import ArtifactStore
from driftloop_core.kafka import Publisher
from driftloop_core.kafka.topics import kind_of_message
from driftloop_core.settings import Settings
from driftloop_inference.bootstrap import InferenceService
from driftloop_inference.config import InferenceSettings
from driftloop_inference.online.arena import Arena, ArenaConfig
from driftloop_inference.online.host import ArenaHost
from driftloop_registry.bootstrap import RegistryService
from driftloop_registry.config import RegistrySettings
from features_server import OnlineFeatures, fv, start_features_server
from google.protobuf.timestamp_pb2 import Timestamp
from models import register_champion_and_candidate
from prometheus_client import REGISTRY

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

# The request's own features; the two aggregates come from the stand-in store.
GIVEN = {"amount": 120.0, "channel": "web", "hour": 3.0}
ONLINE = {"amount_mean_1h": 55.0, "txn_count_10m": 3.0}
EVENT_TIME = Timestamp(seconds=1_763_800_000)


async def wait_for(check: Callable[[], bool], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def probability(model: bytes) -> float:
    """What `model` answers for GIVEN and ONLINE, run as the server runs a row."""
    values = {**GIVEN, **ONLINE}
    feeds = {
        name: np.array([[value]], object if isinstance(value, str) else np.float32)
        for name, value in values.items()
    }
    doubled = {name: np.concatenate((array, array)) for name, array in feeds.items()}
    return float(ort.InferenceSession(model).run(None, doubled)[1][0, 1])


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@dataclass
class Predictions:
    """The predictions topic of one test, read from its beginning, by event id."""

    settings: Settings
    topic: str
    by_event: dict[str, list[events_pb2.Prediction]] = field(default_factory=dict)

    async def read(self, check: Callable[[], bool], within: float = 20.0) -> None:
        """Read until `check()` holds (asserted within `within` seconds)."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka.bootstrap_servers)
        await consumer.start()
        self.by_event.clear()
        try:
            partitions = [
                TopicPartition(self.topic, p) for p in range(self.settings.kafka.partitions)
            ]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            deadline = time.monotonic() + within
            while True:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for record in records:
                        prediction = events_pb2.Prediction.FromString(record.value)
                        self.by_event.setdefault(prediction.event_id, []).append(prediction)
                if check():
                    return
                assert time.monotonic() < deadline, f"predictions not seen: {self.by_event}"
        finally:
            await consumer.stop()

    def of(self, event_id: str) -> list[events_pb2.Prediction]:
        return self.by_event.get(event_id, [])


@dataclass
class Stack:
    """A registry holding v1 (champion) and v2 (candidate), a feature store,
    a publisher, and the inference processes a test starts."""

    model: str
    settings: Settings
    registry: RegistryService
    registry_stub: registry_pb2_grpc.RegistryServiceStub
    features_address: str
    publisher: Publisher
    digests: dict[int, str]
    predictions: Predictions
    serve: Callable[..., Awaitable[InferenceService]]

    def started(self, rollout_id: str, digest: str | None = None) -> events_pb2.ModelRolloutStarted:
        """The registry's notice that v2 goes on trial against v1."""
        return events_pb2.ModelRolloutStarted(
            rollout_id=rollout_id,
            model=self.model,
            candidate_version=2,
            champion_version=1,
            artifact=common_pb2.Artifact(sha256=digest or self.digests[2]),
            reason="offline gate: close to the champion",
        )

    def ended(
        self, rollout_id: str, outcome: int = events_pb2.ROLLOUT_OUTCOME_REJECTED
    ) -> events_pb2.ModelRolloutEnded:
        return events_pb2.ModelRolloutEnded(
            rollout_id=rollout_id,
            model=self.model,
            candidate_version=2,
            champion_version=1,
            outcome=outcome,
        )

    async def publish(self, event: Any) -> None:
        await self.publisher.publish_event(event, key=self.model)

    async def predict(self, service: InferenceService, event_id: str) -> Any:
        async with grpc.aio.insecure_channel(service.endpoint) as channel:
            return await predictor_pb2_grpc.PredictorStub(channel).Predict(
                predictor_pb2.PredictRequest(
                    event_id=event_id,
                    entity_id="c7",
                    features={name: fv(value) for name, value in GIVEN.items()},
                    event_time=EVENT_TIME,
                ),
                timeout=10,
            )


@pytest.fixture
async def stack(
    settings: Settings, unique: str, payments_v1: bytes, payments_v2: bytes
) -> AsyncIterator[Stack]:
    model = f"rollout-{unique}"
    store = ArtifactStore(settings.artifacts_location)
    trained_topic = f"t.models.trained.{unique}"
    predictions_topic = f"t.predictions.{unique}"
    registry = RegistryService(
        settings.for_service("registry"),
        RegistrySettings(
            source_topic=trained_topic,
            deadletter_topic=f"t.deadletter.{unique}",
            group_id=f"g.registry.{unique}",
        ),
        "127.0.0.1:0",
    )
    online = OnlineFeatures({"c7": {name: fv(value) for name, value in ONLINE.items()}})
    features_server, features_address = await start_features_server(online)
    await registry.start()
    running: list[InferenceService] = []

    async def serve(**config: Any) -> InferenceService:
        config.setdefault("online_learners", ())
        service = InferenceService(
            settings.for_service("inference"),
            InferenceSettings(
                predictions_topic=predictions_topic,
                retry_interval_s=0.2,
                # The feature store is the stand-in at `features_address`.
                features_source="remote",
                **config,
            ),
            "127.0.0.1:0",
            registry_address=registry.endpoint,
            features_address=features_address,
            model_name=model,
        )
        running.append(service)
        await service.start()
        await service.wait_ready(30)
        return service

    try:
        async with Publisher(settings) as publisher:
            versions = await register_champion_and_candidate(
                publisher, trained_topic, registry.endpoint, model, store, payments_v1, payments_v2
            )
            async with grpc.aio.insecure_channel(registry.endpoint) as channel:
                stub = registry_pb2_grpc.RegistryServiceStub(channel)
                yield Stack(
                    model,
                    settings,
                    registry,
                    stub,
                    features_address,
                    publisher,
                    {v.version: v.artifact.sha256 for v in versions},
                    Predictions(settings, predictions_topic),
                    serve,
                )
    finally:
        for service in running:
            await service.stop()
        await registry.stop()
        await features_server.stop(0)


def candidate_of(service: InferenceService) -> Any:
    rollouts = service.parts.rollouts
    assert rollouts is not None
    return rollouts.candidate


async def test_a_rollout_is_scored_in_the_shadow_published_and_never_answered(
    stack: Stack, payments_v1: bytes, payments_v2: bytes
) -> None:
    """Predict keeps answering with v1; each event gets v1's prediction and v2's
    shadow on the same features; after the rollout ends, v1's alone. A process
    with `shadow=false` publishes no shadow during the rollout."""
    p1, p2 = probability(payments_v1), probability(payments_v2)
    assert p1 != p2
    service = await stack.serve(online_learners=("lr",))  # the arena on, as deployed
    unshadowed = await stack.serve(shadow=False)
    rollout_id = f"rollout-{uuid.uuid4().hex[:8]}"
    shadows_before = sample(
        "driftloop_inference_shadow_predictions_total", model=stack.model, version="2"
    )

    await stack.publish(stack.started(rollout_id))
    await wait_for(lambda: candidate_of(service) is not None, "the candidate is not loaded")
    assert candidate_of(service).rollout_id == rollout_id
    assert unshadowed.parts.rollouts is None

    reply = await stack.predict(service, "e1")
    assert (reply.model_version, reply.probability, reply.learner) == (1, p1, "")
    reply = await stack.predict(unshadowed, "e1-unshadowed")
    assert (reply.model_version, reply.probability) == (1, p1)

    predictions = stack.predictions
    await predictions.read(
        lambda: len(predictions.of("e1")) == 2 and bool(predictions.of("e1-unshadowed"))
    )
    served, shadow = sorted(predictions.of("e1"), key=lambda p: p.shadow)
    assert (served.shadow, served.rollout_id, served.model_version) == (False, "", 1)
    assert served.probability == p1
    assert (shadow.shadow, shadow.rollout_id, shadow.model_version) == (True, rollout_id, 2)
    assert shadow.probability == p2
    assert shadow.label in (0, 1)
    for name in ("event_id", "entity_id", "model", "event_time", "features", "defaults_applied"):
        assert getattr(shadow, name) == getattr(served, name), name
    assert shadow.features["amount_mean_1h"].float_value == ONLINE["amount_mean_1h"]
    assert shadow.latency.ToNanoseconds() > 0 and shadow.predicted_at.seconds > 0
    assert (
        sample("driftloop_inference_shadow_predictions_total", model=stack.model, version="2")
        == shadows_before + 1
    )
    # The process that does not shadow published v1's prediction only.
    await asyncio.sleep(0.5)
    await predictions.read(lambda: bool(predictions.of("e1-unshadowed")))
    assert [p.shadow for p in predictions.of("e1-unshadowed")] == [False]

    await stack.publish(stack.ended(rollout_id))
    await wait_for(lambda: candidate_of(service) is None, "the candidate is still loaded")
    reply = await stack.predict(service, "e2")
    assert (reply.model_version, reply.probability) == (1, p1)
    await asyncio.sleep(0.5)
    await predictions.read(lambda: bool(predictions.of("e2")))
    assert [(p.shadow, p.model_version) for p in predictions.of("e2")] == [(False, 1)]
    assert (
        sample("driftloop_inference_shadow_predictions_total", model=stack.model, version="2")
        == shadows_before + 1
    )


async def test_a_process_started_during_a_rollout_reads_it_from_the_topic_and_shadows(
    stack: Stack, payments_v2: bytes
) -> None:
    """Before the process starts, the topic holds an ended rollout, a record
    that does not decode, another model's rollout, drift's verdict and the
    rollout still open: the process shadows with the open one, and keeps
    following the topic after the record it skipped."""
    old, current = (f"rollout-{uuid.uuid4().hex[:8]}" for _ in range(2))
    await stack.publish(stack.started(old))
    await stack.publish(stack.ended(old))
    await stack.publisher.publish(
        kind_of_message("driftloop.v1.ModelRolloutStarted").topic,
        b"\x0f not a protobuf message",
        key=stack.model,
        ce_type=kind_of_message("driftloop.v1.ModelRolloutStarted").ce_type,
    )
    other = stack.started("another-models-rollout")
    other.model = f"other-{stack.model}"
    await stack.publish(other)
    await stack.publish(stack.started(current))
    await stack.publish(
        events_pb2.RolloutJudged(
            rollout_id=current,
            model=stack.model,
            candidate_version=2,
            champion_version=1,
            verdict=events_pb2.ROLLOUT_VERDICT_REJECT,
        )
    )

    service = await stack.serve()
    await wait_for(lambda: candidate_of(service) is not None, "the open rollout is not loaded")
    assert candidate_of(service).rollout_id == current
    listener = service.parts.rollout_listener
    assert listener is not None and listener.skipped >= 1

    await stack.predict(service, "late-1")
    predictions = stack.predictions
    await predictions.read(lambda: len(predictions.of("late-1")) == 2)
    shadow = next(p for p in predictions.of("late-1") if p.shadow)
    assert (shadow.rollout_id, shadow.model_version) == (current, 2)
    assert shadow.probability == probability(payments_v2)

    # Still following after the record it skipped: the end drops the candidate.
    await stack.publish(stack.ended(current))
    await wait_for(lambda: candidate_of(service) is None, "the candidate is still loaded")


async def test_a_candidate_whose_digest_does_not_match_is_not_loaded(
    stack: Stack, payments_v1: bytes
) -> None:
    """A rollout naming v2 with v1's digest: the registry vouches for another
    digest, so v2 is not loaded, the failure is counted, and Predict answers
    and publishes as before, without a shadow."""
    service = await stack.serve()
    stage = {"model": stack.model, "stage": "digest"}
    failures = sample("driftloop_inference_shadow_load_failures_total", **stage)
    await stack.publish(stack.started(f"rollout-{uuid.uuid4().hex[:8]}", stack.digests[1]))
    await wait_for(
        lambda: sample("driftloop_inference_shadow_load_failures_total", **stage) > failures,
        "the mismatch is not counted",
    )
    assert candidate_of(service) is None

    reply = await stack.predict(service, "bad-1")
    assert (reply.model_version, reply.probability) == (1, probability(payments_v1))
    await asyncio.sleep(0.5)
    predictions = stack.predictions
    await predictions.read(lambda: bool(predictions.of("bad-1")))
    assert [(p.shadow, p.model_version) for p in predictions.of("bad-1")] == [(False, 1)]


async def test_a_promoted_candidate_is_swapped_in_without_a_second_download(
    stack: Stack, payments_v2: bytes
) -> None:
    """The registry promotes the candidate: inference serves the very model it
    loaded for the shadow, and no longer shadows it."""
    service = await stack.serve()
    rollout_id = f"rollout-{uuid.uuid4().hex[:8]}"
    await stack.publish(stack.started(rollout_id))
    await wait_for(lambda: candidate_of(service) is not None, "the candidate is not loaded")
    loaded = candidate_of(service).model

    await stack.registry_stub.Promote(
        registry_pb2.PromoteRequest(model=stack.model, version=2, reason="the rollout won")
    )
    repository = service.repository
    await wait_for(
        lambda: repository.current is not None and repository.current.version == 2,
        "v2 is not served",
    )
    assert repository.current is loaded

    reply = await stack.predict(service, "promoted-1")
    assert (reply.model_version, reply.probability) == (2, probability(payments_v2))
    await stack.publish(stack.ended(rollout_id, events_pb2.ROLLOUT_OUTCOME_PROMOTED))
    await wait_for(lambda: candidate_of(service) is None, "the candidate is still loaded")
    await asyncio.sleep(0.5)
    predictions = stack.predictions
    await predictions.read(lambda: bool(predictions.of("promoted-1")))
    assert [(p.shadow, p.model_version) for p in predictions.of("promoted-1")] == [(False, 2)]


def test_the_arena_does_not_take_a_shadow_prediction_for_the_served_one() -> None:
    host = ArenaHost("payments", Arena(ArenaConfig(learners=("lr",))), lambda: 1)
    served = events_pb2.Prediction(event_id="e1", model="payments", model_version=1, label=0)
    shadow = events_pb2.Prediction(
        event_id="e1", model="payments", model_version=2, label=1, shadow=True, rollout_id="r"
    )
    assert host.observe(served)
    assert not host.observe(shadow)
