"""The OIP server with real ONNX models: a standard client gets exactly what
onnxruntime gives in-process; bad requests get precise errors and the server
keeps serving."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from inference import grpc_service_pb2 as oip
from inference import grpc_service_pb2_grpc as oip_grpc
from models import payments_feeds

from conftest import output_array, tensor_json

pytestmark = pytest.mark.integration


def _inputs(feeds: dict[str, np.ndarray[Any, Any]]) -> list[dict[str, Any]]:
    return [
        tensor_json(name, array, "BYTES" if array.dtype == object else "FP32")
        for name, array in feeds.items()
    ]


async def test_tritonclient_gets_exactly_onnxruntime_outputs(
    serve_file: Any, triton: Any, payments_v1: bytes
) -> None:
    service = await serve_file(payments_v1)
    feeds = payments_feeds(7)
    expected = ort.InferenceSession(payments_v1).run(None, feeds)
    one_row = {name: array[:1] for name, array in feeds.items()}
    # The server computes a single row as onnxruntime does inside any batch
    # (see LoadedModel.run): the row twice, first result.
    doubled = {name: np.concatenate((array, array)) for name, array in one_row.items()}
    expected_one = [out[:1] for out in ort.InferenceSession(payments_v1).run(None, doubled)]
    answers = await triton(
        service.endpoint,
        [
            {"op": "ready"},
            {"op": "model_ready", "model": "payments"},
            {"op": "metadata", "model": "payments"},
            {"op": "infer", "model": "payments", "inputs": _inputs(feeds), "id": "req-42"},
            {"op": "infer", "model": "payments", "version": "1", "inputs": _inputs(one_row)},
            {"op": "infer", "model": "payments", "inputs": _inputs(feeds), "outputs": ["label"]},
            {"op": "index"},
        ],
    )
    ready, model_ready, metadata, batch, single, only_label, index = answers
    assert ready == {"live": True, "ready": True}
    assert model_ready == {"ready": True}
    meta = metadata["model"]
    assert meta["name"] == "payments" and meta["versions"] == ["1"]
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("amount", "FP32", ["-1", "1"]),
        ("channel", "BYTES", ["-1", "1"]),
        ("hour", "FP32", ["-1", "1"]),
        ("amount_mean_1h", "FP32", ["-1", "1"]),
        ("txn_count_10m", "FP32", ["-1", "1"]),
    ]
    assert [(t["name"], t["datatype"]) for t in meta["outputs"]] == [
        ("label", "INT64"),
        ("probabilities", "FP32"),
    ]
    assert batch["id"] == "req-42" and batch["model_version"] == "1"
    assert batch["model_name"] == "payments"
    np.testing.assert_array_equal(output_array(batch["outputs"]["label"]), expected[0])
    np.testing.assert_array_equal(output_array(batch["outputs"]["probabilities"]), expected[1])
    assert output_array(batch["outputs"]["probabilities"]).dtype == np.float32
    np.testing.assert_array_equal(output_array(single["outputs"]["probabilities"]), expected_one[1])
    assert list(only_label["outputs"]) == ["label"]
    assert index["index"]["models"] == [{"name": "payments", "version": "1", "state": "READY"}]


async def test_generic_model_fp64_int64_raw_and_typed(
    serve_file: Any, triton: Any, generic_model: bytes
) -> None:
    service = await serve_file(generic_model, name="generic", version=3)
    x = np.arange(6, dtype=np.float64).reshape(2, 3) / 7
    k = np.array([[5], [-9]], dtype=np.int64)
    expected = ort.InferenceSession(generic_model).run(None, {"x": x, "k": k})
    (raw,) = await triton(
        service.endpoint,
        [
            {
                "op": "infer",
                "model": "generic",
                "inputs": [tensor_json("x", x, "FP64"), tensor_json("k", k, "INT64")],
            }
        ],
    )
    assert raw["model_version"] == "3"
    np.testing.assert_array_equal(output_array(raw["outputs"]["y"]), expected[0])
    np.testing.assert_array_equal(output_array(raw["outputs"]["z"]), expected[1])

    # Typed contents in, typed contents out.
    request = oip.ModelInferRequest(model_name="generic", id="typed")
    request.inputs.add(name="x", datatype="FP64", shape=[2, 3]).contents.fp64_contents.extend(
        x.ravel().tolist()
    )
    request.inputs.add(name="k", datatype="INT64", shape=[2, 1]).contents.int64_contents.extend(
        k.ravel().tolist()
    )
    async with grpc.aio.insecure_channel(service.endpoint) as channel:
        reply = await oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert reply.id == "typed" and reply.model_version == "3"
    assert not reply.raw_output_contents
    y, z = reply.outputs
    assert (y.name, y.datatype, list(y.shape)) == ("y", "FP64", [2, 3])
    assert list(y.contents.fp64_contents) == expected[0].ravel().tolist()
    assert (z.name, z.datatype, list(z.shape)) == ("z", "INT64", [2, 1])
    assert list(z.contents.int64_contents) == expected[1].ravel().tolist()


async def _infer(endpoint: str, request: oip.ModelInferRequest) -> oip.ModelInferResponse:
    async with grpc.aio.insecure_channel(endpoint) as channel:
        reply: oip.ModelInferResponse = await oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            request, timeout=10
        )
        return reply


def _generic_request(**overrides: Any) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name="generic")
    request.inputs.add(name="x", datatype="FP64", shape=[1, 3])
    request.inputs.add(name="k", datatype="INT64", shape=[1, 1])
    request.raw_input_contents.extend(
        [np.ones(3, dtype="<f8").tobytes(), np.ones(1, dtype="<i8").tobytes()]
    )
    for key, value in overrides.items():
        setattr(request, key, value)
    return request


@pytest.mark.parametrize(
    ("mutate", "code", "fragments"),
    [
        (lambda r: setattr(r.inputs[0], "name", "w"), "INVALID_ARGUMENT", ["'w'", "x"]),
        (
            lambda r: setattr(r.inputs[0], "datatype", "FP32"),
            "INVALID_ARGUMENT",
            ["'x'", "expected datatype FP64", "got FP32"],
        ),
        (
            lambda r: r.inputs[0].shape.__setitem__(1, 4),
            "INVALID_ARGUMENT",
            ["'x'", "expected shape [-1, 3]", "got [1, 4]"],
        ),
        (
            lambda r: r.raw_input_contents.__setitem__(0, b"\x00" * 20),
            "INVALID_ARGUMENT",
            ["'x'", "expected 24 bytes", "got 20"],
        ),
        (
            lambda r: r.inputs.pop(),
            "INVALID_ARGUMENT",
            ["raw_input_contents"],
        ),
        (
            lambda r: setattr(r, "model_name", "other"),
            "NOT_FOUND",
            ["'other'"],
        ),
        (
            lambda r: setattr(r, "model_version", "9"),
            "NOT_FOUND",
            ["version '9'", "loaded versions: 1"],
        ),
    ],
)
async def test_malformed_requests_are_refused_precisely(
    serve_file: Any, generic_model: bytes, mutate: Any, code: str, fragments: list[str]
) -> None:
    service = await serve_file(generic_model, name="generic")
    request = _generic_request()
    mutate(request)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _infer(service.endpoint, request)
    assert caught.value.code().name == code
    for fragment in fragments:
        assert fragment in (caught.value.details() or "")
    # The server keeps serving.
    reply = await _infer(service.endpoint, _generic_request())
    assert list(reply.outputs[1].shape) == [1, 1]


async def test_missing_input_and_typed_count_errors(serve_file: Any, generic_model: bytes) -> None:
    service = await serve_file(generic_model, name="generic")
    request = oip.ModelInferRequest(model_name="generic")
    request.inputs.add(name="x", datatype="FP64", shape=[1, 3]).contents.fp64_contents.extend(
        [1.0, 2.0]
    )
    request.inputs.add(name="k", datatype="INT64", shape=[1, 1]).contents.int64_contents.append(1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _infer(service.endpoint, request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'x': expected 3 FP64 values" in (caught.value.details() or "")
    assert "got 2" in (caught.value.details() or "")
    request = oip.ModelInferRequest(model_name="generic")
    request.inputs.add(name="x", datatype="FP64", shape=[1, 3]).contents.fp64_contents.extend(
        [1.0, 2.0, 3.0]
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _infer(service.endpoint, request)
    assert "input 'k': missing, expected INT64 [-1, 1]" in (caught.value.details() or "")


async def test_unavailable_until_a_model_is_loaded(serve_file: Any, generic_model: bytes) -> None:
    service = await serve_file(None, name="generic")
    async with grpc.aio.insecure_channel(service.endpoint) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        assert (await stub.ServerLive(oip.ServerLiveRequest())).live
        assert not (await stub.ServerReady(oip.ServerReadyRequest())).ready
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ModelInfer(_generic_request())
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        health = health_pb2_grpc.HealthStub(channel)
        overall = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert overall.status == health_pb2.HealthCheckResponse.SERVING
        model_health = await health.Check(
            health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")
        )
        assert model_health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        await service.repository.load_bytes(1, generic_model, None)
        assert (await stub.ServerReady(oip.ServerReadyRequest())).ready
        model_health = await health.Check(
            health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")
        )
        assert model_health.status == health_pb2.HealthCheckResponse.SERVING
        reply = await stub.ModelInfer(_generic_request())
        assert reply.model_version == "1"


async def _hammer(endpoint: str, feeds_list: list[dict[str, np.ndarray[Any, Any]]]) -> list[Any]:
    async with grpc.aio.insecure_channel(endpoint) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)

        async def one(feeds: dict[str, np.ndarray[Any, Any]]) -> Any:
            request = oip.ModelInferRequest(model_name="payments")
            for name, array in feeds.items():
                datatype = "BYTES" if array.dtype == object else "FP32"
                request.inputs.add(name=name, datatype=datatype, shape=array.shape)
                if datatype == "BYTES":
                    request.inputs[-1].contents.bytes_contents.extend(
                        str(item).encode() for item in array.ravel()
                    )
                else:
                    request.inputs[-1].contents.fp32_contents.extend(array.ravel().tolist())
            reply = await stub.ModelInfer(request, timeout=20)
            return (
                np.array(reply.outputs[0].contents.int64_contents),
                np.array(reply.outputs[1].contents.fp32_contents, dtype=np.float32),
            )

        return list(await asyncio.gather(*(one(feeds) for feeds in feeds_list)))


async def test_batching_on_and_off_give_identical_outputs(
    serve_file: Any, payments_v1: bytes
) -> None:
    rows = payments_feeds(64, seed=5)
    feeds_list = [{name: array[i : i + 1] for name, array in rows.items()} for i in range(64)]
    feeds_list += [
        {name: array[i : i + 3] for name, array in rows.items()} for i in range(0, 60, 3)
    ]
    batched = await serve_file(
        payments_v1, batching=True, max_batch_size=16, max_queue_delay_us=2000
    )
    plain = await serve_file(payments_v1, batching=False)
    from driftloop_inference.metrics import BATCH_SIZE

    before = BATCH_SIZE._sum.get()  # type: ignore[attr-defined]
    with_batching = await _hammer(batched.endpoint, feeds_list)
    without = await _hammer(plain.endpoint, feeds_list)
    assert BATCH_SIZE._sum.get() > before  # type: ignore[attr-defined]
    for (label_a, prob_a), (label_b, prob_b) in zip(with_batching, without, strict=True):
        np.testing.assert_array_equal(label_a, label_b)
        np.testing.assert_array_equal(prob_a, prob_b)


async def test_full_queue_is_resource_exhausted_at_once(
    serve_file: Any, payments_v1: bytes
) -> None:
    service = await serve_file(payments_v1, queue_capacity=2, max_batch_size=1)
    model = service.repository.current
    original = model.run

    def slow(feeds: Any) -> Any:
        time.sleep(0.3)
        return original(feeds)

    model.run = slow
    feeds = payments_feeds(1)
    started = time.perf_counter()
    async with grpc.aio.insecure_channel(service.endpoint) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        request = oip.ModelInferRequest(model_name="payments")
        for name, array in feeds.items():
            datatype = "BYTES" if array.dtype == object else "FP32"
            request.inputs.add(name=name, datatype=datatype, shape=array.shape)
            if datatype == "BYTES":
                request.inputs[-1].contents.bytes_contents.append(str(array[0, 0]).encode())
            else:
                request.inputs[-1].contents.fp32_contents.append(float(array[0, 0]))
        results = await asyncio.gather(
            *(stub.ModelInfer(request, timeout=10) for _ in range(8)), return_exceptions=True
        )
        codes = [r.code() for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
        assert len([r for r in results if not isinstance(r, Exception)]) >= 1
        # A deadline shorter than the queue wait is respected.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.gather(
                stub.ModelInfer(request, timeout=10), stub.ModelInfer(request, timeout=0.1)
            )
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.perf_counter() - started < 5
