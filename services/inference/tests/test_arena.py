"""The online arena in the service, on the real broker: a fresh deployment answers
Predict from its first event, and the answers and labels that flow back through
Kafka decide who answers, the online learner or the champion."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from driftloop.v1 import events_pb2, predictor_pb2, predictor_pb2_grpc
from driftloop_core.broker import free_port
from driftloop_core.kafka import Outgoing, Publisher, TopicSpec, ensure_topics
from driftloop_core.kafka.topics import kind_of_message
from driftloop_core.settings import Settings
from driftloop_inference.bootstrap import InferenceService
from driftloop_inference.config import InferenceSettings
from driftloop_testing import collect, eventually, health
from features_server import OnlineFeatures, fv, start_features_server
from grpc_health.v1 import health_pb2
from inference import grpc_service_pb2 as oip
from inference import grpc_service_pb2_grpc as oip_grpc
from models import payments_rows
from prometheus_client import REGISTRY

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

LABEL_TYPE = kind_of_message("driftloop.v1.Label").ce_type
OBSERVATION_TYPE = kind_of_message("driftloop.v1.Observation").ce_type

Serve = Callable[..., Awaitable[InferenceService]]


@pytest.fixture
async def serve(settings: Settings, unique: str) -> AsyncIterator[Serve]:
    """Start inference for model `arena-<unique>` on the test's own topics, with a
    feature store that knows customer c7; nothing registered, the registry down."""
    online = OnlineFeatures({"c7": {"amount_mean_1h": fv(55.0), "txn_count_10m": fv(3.0)}})
    server, features_address = await start_features_server(online)
    running: list[InferenceService] = []

    async def start(**config: Any) -> InferenceService:
        values: dict[str, Any] = {
            "predictions_topic": f"t.predictions.{unique}",
            "labels_topic": f"t.valid.{unique}",
            "follow_promotions": False,
            "retry_interval_s": 0.5,
            "registry_timeout_s": 1.0,
            # Lookups go to the feature store standing in at `features_address`.
            "features_source": "remote",
        }
        service = InferenceService(
            settings.for_service("inference"),
            InferenceSettings(**(values | config)),
            "127.0.0.1:0",
            registry_address=f"127.0.0.1:{free_port()}",
            features_address=features_address,
            model_name=f"arena-{unique}",
        )
        await service.start()
        running.append(service)
        return service

    try:
        yield start
    finally:
        for service in running:
            await service.stop()
        await server.stop(0)


def learnt(model: str) -> float:
    value = REGISTRY.get_sample_value(
        "driftloop_inference_arena_labels_learnt_total", {"model": model}
    )
    return value or 0.0


async def test_a_fresh_deployment_answers_from_the_first_event(
    serve: Serve, settings: Settings, unique: str
) -> None:
    # A label from before the start: a fresh arena starts at the end of the topics.
    model = f"arena-{unique}"
    labels_topic = f"t.valid.{unique}"
    await ensure_topics(settings.kafka, [TopicSpec(labels_topic, settings.kafka.partitions)])
    publisher = Publisher(settings)
    await publisher.start()
    try:
        old = events_pb2.Label(event_id="first", feature_set=model, label=1)
        await publisher.publish(labels_topic, old.SerializeToString(), key="c7", ce_type=LABEL_TYPE)
    finally:
        await publisher.stop()
    service = await serve()
    assert service.model_name == model
    assert service.repository.current is None, "no version anywhere"
    async with grpc.aio.insecure_channel(service.endpoint) as channel:
        reply = await predictor_pb2_grpc.PredictorStub(channel).Predict(
            predictor_pb2.PredictRequest(
                event_id="first",
                entity_id="c7",
                features={"amount": fv(120.0), "channel": fv("web"), "hour": fv(3.0)},
            ),
            timeout=10,
        )
        assert reply.learner.startswith("online:") and reply.model_version == 0
        assert reply.model == model and reply.label in (0, 1)
        # The feature set's features, the entity's online ones looked up.
        assert reply.features_used["amount_mean_1h"].float_value == 55.0
        assert reply.features_used["channel"].string_value == "web"
        assert await health(service.endpoint, "driftloop.v1.Predictor") == (
            health_pb2.HealthCheckResponse.SERVING
        )
        # ModelInfer stays the champion's: there is none yet.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                oip.ModelInferRequest(model_name=model), timeout=10
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    [record] = await collect(settings, f"t.predictions.{unique}", at_least=1)
    published = events_pb2.Prediction.FromString(record.value)
    assert (published.event_id, published.model) == ("first", model)
    assert (published.learner, published.model_version) == (reply.learner, 0)
    assert published.label == reply.label
    assert not published.HasField("champion")
    assert published.features["amount_mean_1h"].float_value == 55.0
    # The feed read the prediction back, but not the label sent before the start.
    feed = service.parts.feed
    assert feed is not None
    await eventually(lambda: feed.stats.records >= 1, 10, "the prediction read back")
    assert learnt(model) == 0


async def test_labels_through_kafka_decide_who_answers(
    serve: Serve, settings: Settings, unique: str, tmp_path: Path, payments_v1: bytes
) -> None:
    path = tmp_path / "v4.onnx"
    path.write_bytes(payments_v1)
    service = await serve(
        model_file=path, model_file_version=4, arena_min_scored=10, arena_window=10
    )
    await service.wait_ready(30)
    model = service.model_name
    session = ort.InferenceSession(payments_v1)

    def champion_label(values: dict[str, Any]) -> int:
        # Two rows, the first one kept: how the server runs a one-row request.
        feeds = {
            name: np.array([[value], [value]], dtype=object if name == "channel" else np.float32)
            for name, value in values.items()
        }
        return int(session.run(None, feeds)[0][0])

    publisher = Publisher(settings)
    await publisher.start()
    sent = 0
    begin = learnt(model)

    async def predict(stub: Any, event_id: str, values: dict[str, Any]) -> Any:
        features = {name: fv(value) for name, value in values.items()}
        return await stub.Predict(
            predictor_pb2.PredictRequest(event_id=event_id, entity_id="c7", features=features),
            timeout=10,
        )

    async def label(answers: list[tuple[str, int]]) -> None:
        """The labels as ingestion writes them: late labels and labelled observations."""
        nonlocal sent
        records = []
        for event_id, truth in answers:
            if sent % 2:
                message: Any = events_pb2.Label(event_id=event_id, feature_set=model, label=truth)
                ce_type = LABEL_TYPE
            else:
                message = events_pb2.Observation(event_id=event_id, feature_set=model, label=truth)
                ce_type = OBSERVATION_TYPE
            records.append(
                Outgoing(f"t.valid.{unique}", message.SerializeToString(), "c7", ce_type)
            )
            sent += 1
        await publisher.publish_batch(records)
        await eventually(lambda: learnt(model) - begin >= sent, 20, f"{sent} labels learnt")

    rows = payments_rows(60, seed=21)[0]
    names = ("amount", "channel", "hour", "amount_mean_1h", "txn_count_10m")
    stream = [dict(zip(names, row, strict=True)) for row in rows]
    try:
        async with grpc.aio.insecure_channel(service.endpoint) as channel:
            stub = predictor_pb2_grpc.PredictorStub(channel)
            # The champion answers until evidence says otherwise; here it is always
            # wrong. A record the feed cannot read does not stall it.
            await publisher.publish(f"t.valid.{unique}", b"\xff\xff", key="c7", ce_type=LABEL_TYPE)
            for i, values in enumerate(stream[:20]):
                reply = await predict(stub, f"a{i}", values)
                if i < 10:  # scored on fewer than arena_min_scored events
                    assert (reply.learner, reply.model_version) == ("", 4)
                await label([(f"a{i}", 1 - champion_label(values))])

            reply = await predict(stub, "probe-1", stream[20])
            assert reply.learner.startswith("online:") and reply.model_version == 0
            # The champion still ran: its answer went out beside the learner's.
            [record] = await collect(
                settings,
                f"t.predictions.{unique}",
                lambda r: events_pb2.Prediction.FromString(r.value).event_id == "probe-1",
                at_least=1,
                quiet_s=0.1,
            )
            probe = events_pb2.Prediction.FromString(record.value)
            assert probe.learner == reply.learner and probe.model_version == 0
            assert probe.champion.model_version == 4
            assert probe.champion.label == champion_label(stream[20])
            assert probe.label == reply.label

            # Now the champion is right every time: once it is ahead over the
            # window, it answers again.
            deadline = time.monotonic() + 20
            for i, values in enumerate(stream[21:], 21):
                reply = await predict(stub, f"b{i}", values)
                if not reply.learner:
                    break
                assert time.monotonic() < deadline
                await label([(f"b{i}", champion_label(values))])
            assert (reply.learner, reply.model_version) == ("", 4)
            assert i > 21, "the lead turned only once the champion's labels came"
    finally:
        await publisher.stop()
