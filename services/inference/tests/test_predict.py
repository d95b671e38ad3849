"""Predict: request features first, then the entity's online features as of the
event time, defaults or FAILED_PRECONDITION for what is missing, and every
prediction on the predictions topic."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from driftloop.v1 import events_pb2, predictor_pb2, predictor_pb2_grpc
from driftloop_core.settings import Settings
from driftloop_inference.bootstrap import InferenceService
from driftloop_inference.config import InferenceSettings
from features_server import OnlineFeatures, fv, start_features_server
from google.protobuf.timestamp_pb2 import Timestamp

pytestmark = pytest.mark.integration


async def _serve(
    settings: Settings,
    path: Path,
    features_address: str,
    topic: str,
    running: list[InferenceService],
    **config: Any,
) -> InferenceService:
    """Inference serving the ONNX file at `path` (version from `config`, default 4),
    its lookups going to `features_address`; appended to `running` for the stop."""
    config.setdefault("model_file_version", 4)
    # The feature store is the stand-in at `features_address`: lookups go to it.
    config.setdefault("features_source", "remote")
    service = InferenceService(
        settings.for_service("inference"),
        InferenceSettings(
            model_file=path, predictions_topic=topic, follow_promotions=False, **config
        ),
        "127.0.0.1:0",
        features_address=features_address,
        model_name="payments",
    )
    await service.start()
    await service.wait_ready(30)
    running.append(service)
    return service


async def test_predict_merges_features_publishes_and_refuses_missing(
    settings: Settings, unique: str, tmp_path: Path, payments_v1: bytes
) -> None:
    online = OnlineFeatures(
        {"c7": {"amount_mean_1h": fv(55.0), "txn_count_10m": fv(3.0), "amount": fv(1.0)}}
    )
    features_server, features_address = await start_features_server(online)
    path = tmp_path / "model.onnx"
    path.write_bytes(payments_v1)
    topic = f"t.predictions.{unique}"
    services: list[InferenceService] = []

    async def serve(**config: Any) -> InferenceService:
        return await _serve(settings, path, features_address, topic, services, **config)

    try:
        service = await serve()
        event_time = Timestamp(seconds=1_763_800_000)
        async with grpc.aio.insecure_channel(service.endpoint) as channel:
            stub = predictor_pb2_grpc.PredictorStub(channel)
            reply = await stub.Predict(
                predictor_pb2.PredictRequest(
                    event_id="e1",
                    entity_id="c7",
                    features={"amount": fv(120.0), "channel": fv("web"), "hour": fv(3.0)},
                    event_time=event_time,
                )
            )
            # The lookup was as of the event time.
            assert online.requests[-1].as_of == event_time
            assert reply.model == "payments" and reply.model_version == 4
            used = {name: value for name, value in reply.features_used.items()}
            assert used["amount"].float_value == 120.0  # the request wins
            assert used["amount_mean_1h"].float_value == 55.0
            assert used["channel"].string_value == "web"
            assert list(reply.defaults_applied) == []
            feeds = {
                "amount": np.array([[120.0]], np.float32),
                "channel": np.array([["web"]], object),
                "hour": np.array([[3.0]], np.float32),
                "amount_mean_1h": np.array([[55.0]], np.float32),
                "txn_count_10m": np.array([[3.0]], np.float32),
            }
            doubled = {k: np.concatenate((v, v)) for k, v in feeds.items()}
            label, probs = ort.InferenceSession(payments_v1).run(None, doubled)
            assert reply.label == int(label[0])
            assert reply.probability == float(probs[0, 1])

            # Unknown entity: NaN defaults, named.
            reply = await stub.Predict(
                predictor_pb2.PredictRequest(event_id="e2", entity_id="nobody")
            )
            assert sorted(reply.defaults_applied) == sorted(
                ["amount", "channel", "hour", "amount_mean_1h", "txn_count_10m"]
            )
            assert math.isnan(reply.features_used["amount"].float_value)

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Predict(predictor_pb2.PredictRequest(model="other", entity_id="c7"))
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND

        strict = await serve(missing_features="fail")
        async with grpc.aio.insecure_channel(strict.endpoint) as channel:
            stub = predictor_pb2_grpc.PredictorStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Predict(predictor_pb2.PredictRequest(event_id="e3", entity_id="c7"))
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "channel" in (caught.value.details() or "")
            assert "hour" in (caught.value.details() or "")
    finally:
        for service in services:
            await service.stop()
        await features_server.stop(0)

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.kafka.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        found: dict[str, events_pb2.Prediction] = {}
        for _ in range(50):
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    prediction = events_pb2.Prediction.FromString(record.value)
                    found[prediction.event_id] = prediction
            if {"e1", "e2"} <= set(found):
                break
        first = found["e1"]
        assert first.entity_id == "c7" and first.model == "payments" and first.model_version == 4
        assert first.event_time == Timestamp(seconds=1_763_800_000)
        assert first.features["amount_mean_1h"].float_value == 55.0
        assert first.predicted_at.seconds > 0
        assert list(found["e2"].defaults_applied)
    finally:
        await consumer.stop()


async def test_predict_while_the_feature_store_is_down_follows_the_lookup_failure_policy(
    settings: Settings, unique: str, tmp_path: Path, payments_v1: bytes
) -> None:
    """A stopped feature store: UNAVAILABLE naming it by default; with
    `on_lookup_failure=defaults` an answer on the request's own features, the
    aggregates named in `defaults_applied`; with `missing_features=fail` as well,
    FAILED_PRECONDITION naming them."""
    online = OnlineFeatures({"c7": {"amount_mean_1h": fv(55.0), "txn_count_10m": fv(3.0)}})
    features_server, features_address = await start_features_server(online)
    path = tmp_path / "model.onnx"
    path.write_bytes(payments_v1)
    services: list[InferenceService] = []

    async def serve(**config: Any) -> InferenceService:
        return await _serve(
            settings,
            path,
            features_address,
            f"t.predictions.{unique}",
            services,
            model_file_version=2,
            **config,
        )

    request = predictor_pb2.PredictRequest(
        event_id="down-1",
        entity_id="c7",
        features={"amount": fv(120.0), "channel": fv("web"), "hour": fv(3.0)},
    )
    try:
        strict, lenient, refusing = (
            await serve(),
            await serve(on_lookup_failure="defaults"),
            await serve(on_lookup_failure="defaults", missing_features="fail"),
        )
        async with grpc.aio.insecure_channel(lenient.endpoint) as channel:
            # While the store answers, the aggregates come from it.
            reply = await predictor_pb2_grpc.PredictorStub(channel).Predict(request, timeout=10)
            assert list(reply.defaults_applied) == []
            assert reply.features_used["amount_mean_1h"].float_value == 55.0
        await features_server.stop(0)

        async with grpc.aio.insecure_channel(strict.endpoint) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await predictor_pb2_grpc.PredictorStub(channel).Predict(request, timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert features_address in (caught.value.details() or "")

        async with grpc.aio.insecure_channel(lenient.endpoint) as channel:
            reply = await predictor_pb2_grpc.PredictorStub(channel).Predict(request, timeout=10)
        assert sorted(reply.defaults_applied) == ["amount_mean_1h", "txn_count_10m"]
        assert reply.features_used["amount"].float_value == 120.0
        assert math.isnan(reply.features_used["amount_mean_1h"].float_value)
        feeds = {
            "amount": np.array([[120.0]], np.float32),
            "channel": np.array([["web"]], object),
            "hour": np.array([[3.0]], np.float32),
            "amount_mean_1h": np.array([[math.nan]], np.float32),
            "txn_count_10m": np.array([[math.nan]], np.float32),
        }
        doubled = {k: np.concatenate((v, v)) for k, v in feeds.items()}
        _, probs = ort.InferenceSession(payments_v1).run(None, doubled)
        assert reply.probability == float(probs[0, 1])

        async with grpc.aio.insecure_channel(refusing.endpoint) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await predictor_pb2_grpc.PredictorStub(channel).Predict(request, timeout=10)
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "amount_mean_1h" in (caught.value.details() or "")
    finally:
        for service in services:
            await service.stop()
        await features_server.stop(0)
