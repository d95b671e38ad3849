"""Bounded inputs (issue 16), each finding reproduced through a real server and a
real ONNX model: ids past 256 bytes, numbers that are not finite, and requests
past the row and byte limits are refused with INVALID_ARGUMENT naming the field
and the rule; nothing refused reaches the predictions topic, no published
feature value is non-finite, and a one-row call still answers while a
max-size call runs."""

from __future__ import annotations

import asyncio
import math
import threading
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from driftloop.v1 import common_pb2, events_pb2, predictor_pb2, predictor_pb2_grpc
from driftloop_core.settings import Settings
from driftloop_inference.bootstrap import InferenceService
from driftloop_inference.config import InferenceSettings
from driftloop_testing.kafka import read_topic
from features_server import OnlineFeatures, fv, start_features_server
from models import payments_feeds

from conftest import output_array, tensor_json

pytestmark = pytest.mark.integration

INVALID = "StatusCode.INVALID_ARGUMENT"
# Every feature of the payments model, so Predict needs no lookup.
GIVEN = {
    "amount": 12.5,
    "channel": "web",
    "hour": 3.0,
    "amount_mean_1h": 20.0,
    "txn_count_10m": 1.0,
}


def _features(**changed: float | str) -> dict[str, common_pb2.FeatureValue]:
    return {name: fv(value) for name, value in {**GIVEN, **changed}.items()}


async def _serve_predict(
    settings: Settings, tmp_path: Path, model: bytes, topic: str, features_address: str
) -> InferenceService:
    path = tmp_path / "payments.onnx"
    path.write_bytes(model)
    service = InferenceService(
        settings.for_service("inference"),
        InferenceSettings(
            model_file=path,
            predictions_topic=topic,
            follow_promotions=False,
            online_learners=(),
            features_source="remote",  # the stand-in store at `features_address`
        ),
        "127.0.0.1:0",
        features_address=features_address,
        model_name="payments",
    )
    await service.start()
    await service.wait_ready(30)
    return service


async def _refused(stub: Any, request: predictor_pb2.PredictRequest) -> str:
    """The details of Predict's INVALID_ARGUMENT for `request`."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Predict(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    return caught.value.details() or ""


def _published(records: list[Any]) -> dict[str, events_pb2.Prediction]:
    predictions = [events_pb2.Prediction.FromString(record.value) for record in records]
    return {prediction.event_id: prediction for prediction in predictions}


async def test_predict_refuses_ids_past_256_bytes_and_publishes_none_of_them(
    settings: Settings, unique: str, tmp_path: Path, payments_v1: bytes
) -> None:
    topic = f"t.predictions.{unique}"
    service = await _serve_predict(settings, tmp_path, payments_v1, topic, "127.0.0.1:1")
    try:
        async with grpc.aio.insecure_channel(service.endpoint) as channel:
            stub = predictor_pb2_grpc.PredictorStub(channel)
            # The finding: a 2 MB entity id was answered and published.
            details = await _refused(
                stub,
                predictor_pb2.PredictRequest(
                    event_id="huge-entity", entity_id="c" * 2_000_000, features=_features()
                ),
            )
            assert details == ("entity_id: 2000000 bytes; an id may have at most 256 bytes (UTF-8)")
            details = await _refused(
                stub, predictor_pb2.PredictRequest(event_id="e" * 257, features=_features())
            )
            assert details.startswith("event_id: 257 bytes;")
            details = await _refused(
                stub,
                predictor_pb2.PredictRequest(
                    event_id="long-model", model="m" * 300, features=_features()
                ),
            )
            assert details.startswith("model: 300 bytes;")
            # Bytes of UTF-8, not characters: 129 two-byte characters are 258 bytes.
            details = await _refused(
                stub,
                predictor_pb2.PredictRequest(
                    event_id="accented", entity_id="é" * 129, features=_features()
                ),
            )
            assert details.startswith("entity_id: 258 bytes;")
            reply = await stub.Predict(
                predictor_pb2.PredictRequest(
                    event_id="ok-" + "x" * 253, entity_id="é" * 128, features=_features()
                ),
                timeout=10,
            )
            assert reply.model_version == 1
    finally:
        await service.stop()
    published = _published(await read_topic(settings, topic))
    assert list(published) == ["ok-" + "x" * 253]
    assert published["ok-" + "x" * 253].entity_id == "é" * 128


async def test_predict_refuses_non_finite_features_and_publishes_no_non_finite_value(
    settings: Settings, unique: str, tmp_path: Path, payments_v1: bytes
) -> None:
    # The feature store's own values that are not finite are taken as missing.
    online = OnlineFeatures(
        {"c7": {"amount_mean_1h": fv(math.inf), "txn_count_10m": fv(math.nan), "hour": fv(4.0)}}
    )
    features_server, features_address = await start_features_server(online)
    topic = f"t.predictions.{unique}"
    service = await _serve_predict(settings, tmp_path, payments_v1, topic, features_address)
    try:
        async with grpc.aio.insecure_channel(service.endpoint) as channel:
            stub = predictor_pb2_grpc.PredictorStub(channel)
            refusals = {
                "nan": (fv(math.nan), "feature 'amount': nan is not a finite number"),
                "inf": (fv(-math.inf), "feature 'amount': -inf is not a finite number"),
                # Text that parses as inf, and a double past FP32's largest.
                "1e400": (fv("1e400"), "feature 'amount': inf is not a finite number"),
                "1e39": (fv(1e39), "feature 'amount': 1e+39 is beyond the range of FP32"),
            }
            for event_id, (value, message) in refusals.items():
                features = _features()
                features["amount"].CopyFrom(value)
                details = await _refused(
                    stub, predictor_pb2.PredictRequest(event_id=event_id, features=features)
                )
                assert details.startswith(message), details
                assert details.endswith("Predict takes finite numbers only")
            # Online values that are not finite: defaults, named, and still answered.
            given = {name: fv(GIVEN[name]) for name in ("amount", "channel")}
            reply = await stub.Predict(
                predictor_pb2.PredictRequest(event_id="online", entity_id="c7", features=given),
                timeout=10,
            )
            assert sorted(reply.defaults_applied) == ["amount_mean_1h", "txn_count_10m"]
            assert reply.features_used["hour"].float_value == 4.0
            # The response shows what the model was fed: the trainer's missing value.
            assert math.isnan(reply.features_used["amount_mean_1h"].float_value)
            reply = await stub.Predict(
                predictor_pb2.PredictRequest(event_id="finite", features=_features(amount=3e38)),
                timeout=10,
            )
            assert 0.0 <= reply.probability <= 1.0
    finally:
        await service.stop()
        await features_server.stop(0)
    published = _published(await read_topic(settings, topic))
    assert sorted(published) == ["finite", "online"]
    for prediction in published.values():
        for name, value in prediction.features.items():
            number = getattr(value, value.WhichOneof("kind") or "float_value")
            assert not isinstance(number, float) or math.isfinite(number), (name, number)
        assert math.isfinite(prediction.probability)
    online_prediction = published["online"]
    assert sorted(online_prediction.defaults_applied) == ["amount_mean_1h", "txn_count_10m"]
    # Published as missing: named in defaults_applied, without a value.
    assert online_prediction.features["amount_mean_1h"].WhichOneof("kind") is None
    assert online_prediction.features["txn_count_10m"].WhichOneof("kind") is None
    assert online_prediction.features["hour"].float_value == 4.0
    assert published["finite"].features["amount"].float_value == 3e38


def _payments_inputs(feeds: dict[str, np.ndarray[Any, Any]]) -> list[dict[str, Any]]:
    return [
        tensor_json(name, array, "BYTES" if array.dtype == object else "FP32")
        for name, array in feeds.items()
    ]


def _error(answer: dict[str, Any]) -> tuple[str, str]:
    assert "error" in answer, answer
    return answer["error"]["status"], answer["error"]["message"]


async def test_model_infer_refuses_ids_past_256_bytes(
    serve_file: Any, triton: Any, payments_v1: bytes
) -> None:
    service = await serve_file(payments_v1)
    inputs = _payments_inputs(payments_feeds(1))
    answers = await triton(
        service.endpoint,
        [
            {"op": "infer", "model": "p" * 300, "inputs": inputs},
            {"op": "infer", "model": "payments", "version": "1" * 257, "inputs": inputs},
            {"op": "infer", "model": "payments", "id": "r" * 2_000_000, "inputs": inputs},
            {"op": "infer", "model": "payments", "id": "r" * 256, "inputs": inputs},
        ],
    )
    long_name, long_version, long_id, longest_id = answers
    assert _error(long_name) == (
        INVALID,
        "model_name: 300 bytes; an id may have at most 256 bytes (UTF-8)",
    )
    assert _error(long_version)[1].startswith("model_version: 257 bytes;")
    assert _error(long_id)[1].startswith("id: 2000000 bytes;")
    assert longest_id["id"] == "r" * 256


async def test_model_infer_refuses_non_finite_fp32_and_fp64_inputs(
    serve_file: Any, triton: Any, payments_v1: bytes, generic_model: bytes
) -> None:
    payments = await serve_file(payments_v1)
    feeds = payments_feeds(3)
    feeds["amount"][1, 0] = np.nan
    hour_inf = payments_feeds(2)
    hour_inf["hour"][1, 0] = np.inf
    answers = await triton(
        payments.endpoint,
        [
            {"op": "infer", "model": "payments", "inputs": _payments_inputs(feeds)},
            {"op": "infer", "model": "payments", "inputs": _payments_inputs(hour_inf)},
            {"op": "infer", "model": "payments", "inputs": _payments_inputs(payments_feeds(3))},
        ],
    )
    assert _error(answers[0]) == (
        INVALID,
        "input 'amount': value nan at index 1 is not a finite number; FP32 inputs take finite "
        "numbers only",
    )
    assert _error(answers[1])[1].startswith("input 'hour': value inf at index 1 is not a finite")
    assert "outputs" in answers[2]

    generic = await serve_file(generic_model, name="generic")
    x = np.array([[1.0, 2.0, 3.0], [4.0, -np.inf, 6.0]])
    k = np.array([[1], [2]], dtype=np.int64)
    answers = await triton(
        generic.endpoint,
        [
            {
                "op": "infer",
                "model": "generic",
                "inputs": [tensor_json("x", x, "FP64"), tensor_json("k", k, "INT64")],
            },
        ],
    )
    assert _error(answers[0]) == (
        INVALID,
        "input 'x': value -inf at index 4 is not a finite number; FP64 inputs take finite "
        "numbers only",
    )


async def test_model_infer_bounds_rows_and_bytes_naming_the_setting(
    serve_file: Any, triton: Any, payments_v1: bytes, generic_model: bytes
) -> None:
    service = await serve_file(payments_v1)
    largest = payments_feeds(4096)
    # The finding: 1,000,000 rows (23 MB) were decoded and run.
    million = {name: np.resize(array, (1_000_000, 1)) for name, array in largest.items()}
    answers = await triton(
        service.endpoint,
        [
            {"op": "infer", "model": "payments", "inputs": _payments_inputs(million)},
            {"op": "infer", "model": "payments", "inputs": _payments_inputs(largest)},
            {
                "op": "infer",
                "model": "payments",
                "inputs": _payments_inputs(payments_feeds(4097)),
            },
            {"op": "infer", "model": "payments", "inputs": _payments_inputs(payments_feeds(1))},
        ],
    )
    too_many, max_size, one_more, one_row = answers
    # 23 MB is past the server's message limit (the largest request plus 1 MiB):
    # gRPC refuses it before it is parsed.
    code, message = _error(too_many)
    assert code == "StatusCode.RESOURCE_EXHAUSTED"
    assert "larger than max" in message and str(8 * 1024 * 1024 + 1024 * 1024) in message
    assert _error(one_more) == (
        INVALID,
        "input 'amount': 4097 rows, more than the 4096 a request may carry "
        "(DRIFTLOOP_INFERENCE_MAX_REQUEST_ROWS); send them in several requests",
    )
    expected = ort.InferenceSession(payments_v1).run(None, largest)
    np.testing.assert_array_equal(output_array(max_size["outputs"]["label"]), expected[0])
    np.testing.assert_array_equal(output_array(max_size["outputs"]["probabilities"]), expected[1])
    assert output_array(one_row["outputs"]["label"]).shape == (1,)

    small = await serve_file(generic_model, name="generic", max_request_bytes=16 * 1024)
    x = np.ones((1000, 3))  # 24,000 bytes of FP64
    k = np.ones((1000, 1), dtype=np.int64)
    answers = await triton(
        small.endpoint,
        [
            {
                "op": "infer",
                "model": "generic",
                "inputs": [tensor_json("x", x, "FP64"), tensor_json("k", k, "INT64")],
            },
            {
                "op": "infer",
                "model": "generic",
                "inputs": [tensor_json("x", x[:500], "FP64"), tensor_json("k", k[:500], "INT64")],
            },
        ],
    )
    assert _error(answers[0]) == (
        INVALID,
        "input 'x': the request's tensors take more than the 16384 bytes a request may carry "
        "(DRIFTLOOP_INFERENCE_MAX_REQUEST_BYTES); send fewer rows per request",
    )
    assert output_array(answers[1]["outputs"]["y"]).shape == (500, 3)


async def test_a_one_row_call_answers_while_a_max_size_call_runs(
    serve_file: Any, triton: Any, payments_v1: bytes
) -> None:
    """The max-size call's run is held until the one-row call beside it has its
    answer: with batches in the worker thread (`inline_run_us=0`), the one-row
    call would wait forever if both shared one thread. A second large call
    beyond `large_queue_capacity` is refused at once, naming the setting."""
    service = await serve_file(payments_v1, inline_run_us=0, large_queue_capacity=1)
    model = service.repository.current
    original = model.run
    entered, release = threading.Event(), threading.Event()

    def held_when_large(feeds: dict[str, Any]) -> Any:
        if len(feeds["amount"]) > 64:
            entered.set()
            release.wait(30)
        return original(feeds)

    model.run = held_when_large
    largest = _payments_inputs(payments_feeds(4096))
    large = asyncio.create_task(
        triton(service.endpoint, [{"op": "infer", "model": "payments", "inputs": largest}])
    )
    try:
        assert await asyncio.to_thread(entered.wait, 30), "the large call never ran"
        one_row = _payments_inputs(payments_feeds(1))
        beside = await triton(
            service.endpoint,
            [
                {"op": "infer", "model": "payments", "inputs": one_row},
                {"op": "infer", "model": "payments", "inputs": largest},
            ],
        )
        answered, refused = beside
        assert output_array(answered["outputs"]["label"]).shape == (1,)
        assert not large.done()
        status, message = _error(refused)
        assert status == "StatusCode.RESOURCE_EXHAUSTED"
        assert "DRIFTLOOP_INFERENCE_LARGE_QUEUE_CAPACITY" in message
    finally:
        release.set()
        [answer] = await large
    assert output_array(answer["outputs"]["label"]).shape == (4096,)
