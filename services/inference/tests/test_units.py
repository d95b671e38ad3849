"""Unit tests: tensor codec, model loading refusals, batching."""

from __future__ import annotations

import asyncio
import struct
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from driftloop.v1 import common_pb2
from driftloop_inference.adapters.onnx import load_model
from driftloop_inference.batching import Batcher, Overloaded
from driftloop_inference.codec import (
    InputDecoder,
    InvalidTensor,
    TensorSpec,
    decode_bytes_tensor,
    decode_inputs,
    encode_bytes_tensor,
)
from driftloop_inference.errors import InvalidInput, RequestTooLarge
from driftloop_inference.model import ModelLoadError
from driftloop_inference.predict import MAX_TEXT_BYTES, feature_values
from features_server import fv
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


def test_decoder_limits_are_checked_from_the_shapes_before_values_are_read() -> None:
    specs = [
        TensorSpec("x", "FP32", (-1, 1)),
        TensorSpec("c", "BYTES", (-1, 1)),
        TensorSpec("h", "FP16", (4, 1)),
    ]
    decoder = InputDecoder(specs, max_rows=4, max_bytes=64, finite=True)

    def request(rows: int) -> oip.ModelInferRequest:
        message = oip.ModelInferRequest()
        message.inputs.add(name="x", datatype="FP32", shape=[rows, 1])
        message.inputs.add(name="c", datatype="BYTES", shape=[rows, 1])
        message.inputs.add(name="h", datatype="FP16", shape=[4, 1])
        message.raw_input_contents.extend(
            [
                np.ones(rows, "<f4").tobytes(),
                b"".join(struct.pack("<I", 3) + b"web" for _ in range(rows)),
                np.ones(4, "<f2").tobytes(),
            ]
        )
        return message

    assert decoder.decode(request(4))["c"].shape == (4, 1)
    # A million rows claimed, none sent: refused for the rows, nothing read.
    claimed = oip.ModelInferRequest()
    claimed.inputs.add(name="x", datatype="FP32", shape=[1_000_000, 1])
    claimed.raw_input_contents.append(b"")
    with pytest.raises(RequestTooLarge) as caught:
        decoder.plan(claimed)
    assert (caught.value.field, caught.value.rule) == ("x", "max_request_rows")
    # A fixed first dimension is the model's own, not a row count.
    fixed = oip.ModelInferRequest(raw_input_contents=[np.ones(4, "<f2").tobytes()])
    fixed.inputs.add(name="h", datatype="FP16", shape=[4, 1])
    assert InputDecoder(specs[2:], max_rows=1).decode(fixed)["h"].shape == (4, 1)
    # Typed BYTES are planned at 4 bytes an element, counted by their lengths
    # when read, before any is decoded.
    typed = oip.ModelInferRequest()
    typed.inputs.add(name="x", datatype="FP32", shape=[1, 1]).contents.fp32_contents.append(1.0)
    typed.inputs.add(name="c", datatype="BYTES", shape=[1, 1]).contents.bytes_contents.append(
        b"w" * 100
    )
    small = InputDecoder(specs[:2], max_bytes=64)
    planned = small.plan(typed)
    assert planned.size == 4 + 4
    with pytest.raises(RequestTooLarge, match="'c': the request's tensors take more than the 64"):
        small.read(planned)
    # Not finite: refused only when asked to.
    nan = request(1)
    nan.raw_input_contents[2] = np.array([1, np.nan, 1, 1], "<f2").tobytes()
    with pytest.raises(InvalidTensor, match="'h': value nan at index 1 is not a finite number"):
        decoder.decode(nan)
    assert np.isnan(InputDecoder(specs).decode(nan)["h"][1, 0])


def test_predict_features_must_fit_their_input_type_and_be_finite() -> None:
    specs = [
        TensorSpec("amount", "FP32", (-1, 1)),
        TensorSpec("ratio", "FP64", (-1, 1)),
        TensorSpec("count", "INT32", (-1, 1)),
        TensorSpec("channel", "BYTES", (-1, 1)),
    ]
    ok = {
        "amount": fv(1.0),
        "ratio": fv(1e39),  # finite as FP64
        "count": common_pb2.FeatureValue(int_value=3),
        "channel": fv("web"),
    }
    values, used, missing = feature_values(specs, ok, {}, {})
    assert values == {"amount": 1.0, "ratio": 1e39, "count": 3, "channel": "web"}
    assert used["count"].int_value == 3 and missing == []
    refusals = {
        "amount": (fv(1e39), "finite", "1e+39 is beyond the range of FP32 (±3.402823e+38)"),
        "ratio": (fv("nan"), "finite", "nan is not a finite number"),
        "count": (
            common_pb2.FeatureValue(int_value=2**40),
            "range",
            "1099511627776 is out of range for INT32",
        ),
        "channel": (fv("é" * 2049), f"at most {MAX_TEXT_BYTES} bytes", "4098 bytes of text"),
    }
    for name, (value, rule, message) in refusals.items():
        with pytest.raises(InvalidInput) as caught:
            feature_values(specs, {**ok, name: value}, {}, {})
        assert (caught.value.field, caught.value.rule) == (name, rule)
        assert message in str(caught.value)
    # A long text that is not a number is shown cut short.
    with pytest.raises(InvalidInput) as caught:
        feature_values(specs, {**ok, "amount": fv("z" * 10_000)}, {}, {})
    assert len(str(caught.value)) < 200
    # The feature store's values that are not finite are missing: the default applies.
    online = {"amount": fv(float("inf")), "ratio": fv(float("nan"))}
    given = {"count": ok["count"], "channel": ok["channel"]}
    values, used, missing = feature_values(specs, given, online, {"amount": 0.0})
    assert missing == ["amount", "ratio"]
    assert values["amount"] == 0.0 and np.isnan(values["ratio"])
    assert used["amount"].float_value == 0.0


def _external(tensor: onnx.TensorProto, location: str) -> None:
    tensor.ClearField("raw_data")
    tensor.ClearField("double_data")
    tensor.ClearField("int64_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location


def test_load_model_refuses_tensors_kept_in_external_files(
    generic_model: bytes, tmp_path: Path
) -> None:
    """A tensor whose data lives outside the artifact (here outside any folder of
    the model's) is refused by name, in an initializer or a node's attribute."""
    (tmp_path / "outside.bin").write_bytes(np.float64(7.0).tobytes())
    location = str(tmp_path / "outside.bin")

    model = onnx.ModelProto.FromString(generic_model)
    _external(model.graph.initializer[0], location)
    with pytest.raises(ModelLoadError) as caught:
        load_model("m", 3, model.SerializeToString(), None)
    assert caught.value.stage == "external_data"
    assert repr(model.graph.initializer[0].name) in str(caught.value)
    assert location in str(caught.value)

    constant = onnx.helper.make_node(
        "Constant",
        [],
        ["c"],
        value=onnx.helper.make_tensor("c", onnx.TensorProto.DOUBLE, [1], [1.0]),
    )
    model = onnx.ModelProto.FromString(generic_model)
    model.graph.node.append(constant)
    _external(model.graph.node[-1].attribute[0].t, "../../etc/passwd")
    with pytest.raises(ModelLoadError) as caught:
        load_model("m", 4, model.SerializeToString(), None)
    assert caught.value.stage == "external_data" and "../../etc/passwd" in str(caught.value)


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


def test_decoder_checks_every_new_shape_and_reads_typed_values_exactly() -> None:
    specs = [TensorSpec("x", "FP32", (-1, 2)), TensorSpec("k", "INT64", (-1, 1))]
    decoder = InputDecoder(specs)

    def request(rows: int, shape_x: list[int] | None = None) -> oip.ModelInferRequest:
        message = oip.ModelInferRequest()
        x = message.inputs.add(name="x", datatype="FP32", shape=shape_x or [rows, 2])
        x.contents.fp32_contents.extend([0.1 * i for i in range(rows * 2)])
        k = message.inputs.add(name="k", datatype="INT64", shape=[rows, 1])
        k.contents.int64_contents.extend([2**62 + i for i in range(rows)])
        return message

    # A few values (the per-element path) and many (numpy.array) read the same.
    for rows in (1, 3, 200):
        arrays = decoder.decode(request(rows))
        np.testing.assert_array_equal(
            arrays["x"], np.array([0.1 * i for i in range(rows * 2)], np.float32).reshape(-1, 2)
        )
        np.testing.assert_array_equal(
            arrays["k"], np.array([2**62 + i for i in range(rows)], np.int64).reshape(-1, 1)
        )
    # Shapes seen before do not make a wrong one pass.
    with pytest.raises(InvalidTensor, match=r"'x': expected shape \[-1, 2\], got \[1, 3\]"):
        decoder.decode(request(1, [1, 3]))
    with pytest.raises(InvalidTensor, match="negative dimension"):
        decoder.decode(request(1, [-1, 2]))
    short = request(2)
    del short.inputs[1].contents.int64_contents[-1]
    with pytest.raises(InvalidTensor, match=r"'k': expected 2 INT64 values .* got 1"):
        decoder.decode(short)


async def test_slow_models_run_off_the_event_loop(generic_model: bytes) -> None:
    """A model slower than `inline_run_us` runs in a worker thread, so the event
    loop keeps answering while it runs; a quick one runs on the loop; both give
    the same outputs."""
    quick = load_model("m", 1, generic_model, None, probe_rows=8)
    slow = load_model("m", 2, generic_model, None, probe_rows=8)
    assert quick.run_seconds < 1.0
    slow.run_seconds = 1.0
    threads: dict[int, set[str]] = {1: set(), 2: set()}

    def recording(model: Any) -> Any:
        original = model.run

        def run(feeds: dict[str, Any]) -> Any:
            threads[model.version].add(threading.current_thread().name)
            if model is slow:
                time.sleep(0.2)
            return original(feeds)

        return run

    quick.run = recording(quick)  # type: ignore[method-assign]
    slow.run = recording(slow)  # type: ignore[method-assign]
    feeds = {"x": np.full((1, 3), 2.0), "k": np.array([[4]], dtype=np.int64)}
    for enabled in (True, False):
        batcher = Batcher(enabled=enabled, max_batch_size=8, max_queue_delay_us=0, capacity=10)
        batcher.start()
        try:
            ticks = 0

            async def ticking() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            ticker = asyncio.create_task(ticking())
            slow_outputs = await batcher.infer(slow, feeds, 1, None)
            ticker.cancel()
            # The routing, not the machine's timing, is under test: each run folds
            # its duration into `run_seconds`, and one run slowed by a busy machine
            # would otherwise move the quick model off the loop.
            quick.run_seconds = 0.0
            quick_outputs = await batcher.infer(quick, feeds, 1, None)
        finally:
            await batcher.stop()
        assert ticks >= 5, "the event loop stalled while the slow model ran"
        for a, b in zip(slow_outputs, quick_outputs, strict=True):
            np.testing.assert_array_equal(a, b)
    assert threads[1] == {threading.current_thread().name}
    assert threading.current_thread().name not in threads[2]
