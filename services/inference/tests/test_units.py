"""Unit tests: tensor codec, model loading refusals, batching."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import numpy as np
import pytest
from driftloop_inference.batching import Batcher, Overloaded
from driftloop_inference.codec import (
    InvalidTensor,
    TensorSpec,
    decode_bytes_tensor,
    decode_inputs,
    encode_bytes_tensor,
)
from driftloop_inference.model import ModelLoadError, load_model
from inference import grpc_service_pb2 as oip


def test_bytes_tensor_round_trip() -> None:
    array = np.array(["web", "", "pôs"], dtype=object)
    wire = encode_bytes_tensor(array)
    assert wire[:7] == struct.pack("<I", 3) + b"web"
    assert list(decode_bytes_tensor("c", wire, 3)) == ["web", "", "pôs"]
    with pytest.raises(InvalidTensor, match="'c': expected 2 BYTES elements"):
        decode_bytes_tensor("c", wire, 2)
    with pytest.raises(InvalidTensor, match="overruns"):
        decode_bytes_tensor("c", wire[:-1], 3)


def test_raw_and_typed_decode_agree() -> None:
    specs = {"x": TensorSpec("x", "FP32", (-1, 2))}
    values = np.array([[1.5, -2.0], [3.25, 0.0]], dtype=np.float32)
    raw = oip.ModelInferRequest(raw_input_contents=[values.tobytes()])
    raw.inputs.add(name="x", datatype="FP32", shape=[2, 2])
    typed = oip.ModelInferRequest()
    typed.inputs.add(name="x", datatype="FP32", shape=[2, 2]).contents.fp32_contents.extend(
        values.ravel().tolist()
    )
    np.testing.assert_array_equal(decode_inputs(raw, specs)["x"], values)
    np.testing.assert_array_equal(decode_inputs(typed, specs)["x"], values)
    typed.inputs[0].shape[1] = 3
    with pytest.raises(InvalidTensor, match=r"'x': expected shape \[-1, 2\], got \[2, 3\]"):
        decode_inputs(typed, specs)


def test_load_model_refuses_bad_digest_and_bad_bytes(generic_model: bytes) -> None:
    with pytest.raises(ModelLoadError) as caught:
        load_model("m", 1, generic_model, "0" * 64)
    assert caught.value.stage == "digest"
    with pytest.raises(ModelLoadError) as caught:
        load_model("m", 1, b"not onnx", None)
    assert caught.value.stage == "onnx"
    model = load_model("m", 2, generic_model, None)
    assert model.batchable and [s.datatype for s in model.inputs] == ["FP64", "INT64"]


async def test_batcher_merges_concurrent_requests(generic_model: bytes) -> None:
    model = load_model("m", 1, generic_model, None)
    runs: list[int] = []
    original = model.run

    def counting(feeds: dict[str, Any]) -> Any:
        runs.append(len(feeds["x"]))
        return original(feeds)

    model.run = counting  # type: ignore[method-assign]
    batcher = Batcher(enabled=True, max_batch_size=8, max_queue_delay_us=20_000, capacity=100)
    batcher.start()
    try:
        requests = [
            {"x": np.full((1, 3), i, dtype=np.float64), "k": np.array([[i]], dtype=np.int64)}
            for i in range(16)
        ]
        results = await asyncio.gather(*(batcher.infer(model, f, 1, None) for f in requests))
        for i, (y, z) in enumerate(results):
            np.testing.assert_array_equal(y, np.full((1, 3), 2.0 * i))
            np.testing.assert_array_equal(z, np.array([[i + 1]]))
        assert len(runs) < 16 and max(runs) <= 8
    finally:
        await batcher.stop()
    full = Batcher(enabled=True, max_batch_size=8, max_queue_delay_us=0, capacity=1)
    full._inflight = 1
    with pytest.raises(Overloaded):
        await full.infer(model, requests[0], 1, None)
