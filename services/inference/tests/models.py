"""Real ONNX models for the tests: the trainer's payments contract and a generic
one, and a champion with a candidate registered through a real registry."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc.aio
import numpy as np
import onnx
from driftloop.v1 import common_pb2, events_pb2, registry_pb2, registry_pb2_grpc
from driftloop_core.artifacts import ArtifactStore
from driftloop_core.featureset import default_featureset_path, load_featureset
from driftloop_core.kafka import Publisher
from driftloop_testing import model_trained as shared_model_trained
from driftloop_trainer.onnx_model import export_onnx
from driftloop_trainer.training import build_pipeline
from inference import grpc_service_pb2 as oip
from onnx import TensorProto, helper

FEATURES = ("amount", "channel", "hour", "amount_mean_1h", "txn_count_10m")


def payments_rows(rows: int = 300, seed: int = 3) -> tuple[np.ndarray[Any, Any], Any]:
    rng = np.random.default_rng(seed)
    matrix = np.empty((rows, len(FEATURES)), dtype=object)
    amount = rng.gamma(2.0, 40.0, rows)
    channel = rng.choice(["web", "pos", "atm"], rows)
    hour = rng.integers(0, 24, rows).astype(float)
    matrix[:, 0] = amount
    matrix[:, 1] = channel
    matrix[:, 2] = hour
    matrix[:, 3] = amount * rng.uniform(0.5, 1.5, rows)
    matrix[:, 4] = rng.integers(0, 6, rows).astype(float)
    score = 0.05 * (amount - 80) + 2.0 * (channel == "web") - 1.0
    labels = (rng.uniform(0, 1, rows) < 1 / (1 + np.exp(-score))).astype(np.int64)
    return matrix, labels


def payments_onnx(c: float = 1.0, seed: int = 3) -> bytes:
    """A logistic regression exported exactly as the trainer exports it; `c`
    (regularisation) gives each version different weights and bytes."""
    featureset = load_featureset(default_featureset_path())
    pipeline = build_pipeline(featureset, "logistic_regression", {"C": c})
    matrix, labels = payments_rows(seed=seed)
    pipeline.fit(matrix, labels)
    return export_onnx(pipeline, featureset, "payments")


def payments_feeds(rows: int, seed: int = 11) -> dict[str, np.ndarray[Any, Any]]:
    matrix, _ = payments_rows(rows, seed)
    feeds: dict[str, np.ndarray[Any, Any]] = {}
    for j, name in enumerate(FEATURES):
        if name == "channel":
            feeds[name] = matrix[:, j].astype(str).astype(object).reshape(-1, 1)
        else:
            feeds[name] = matrix[:, j].astype(np.float32).reshape(-1, 1)
    return feeds


def generic_onnx() -> bytes:
    """FP64 and INT64 inputs: y = x * 2 (FP64 [-1, 3]), z = k + 1 (INT64 [-1, 1])."""
    two = helper.make_tensor("two", TensorProto.DOUBLE, [1], [2.0])
    one = helper.make_tensor("one", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["y"]),
            helper.make_node("Add", ["k", "one"], ["z"]),
        ],
        "generic",
        [
            helper.make_tensor_value_info("x", TensorProto.DOUBLE, [None, 3]),
            helper.make_tensor_value_info("k", TensorProto.INT64, [None, 1]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.DOUBLE, [None, 3]),
            helper.make_tensor_value_info("z", TensorProto.INT64, [None, 1]),
        ],
        initializer=[two, one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def model_trained(
    model: str, artifact: common_pb2.Artifact, run: str, auc: float, **extra: Any
) -> events_pb2.ModelTrained:
    """A trainer's `ModelTrained` for `artifact` over the payments features; `extra`
    sets further fields (e.g. champion_metrics={"roc_auc": 0.8}, champion_version=1)."""
    return shared_model_trained(model, artifact, run, auc, feature_names=FEATURES, **extra)


def typed_infer_request(
    model: str, feeds: dict[str, np.ndarray[Any, Any]]
) -> oip.ModelInferRequest:
    """ModelInfer with typed contents: BYTES for object arrays, FP32 otherwise."""
    request = oip.ModelInferRequest(model_name=model)
    for name, array in feeds.items():
        tensor = request.inputs.add(name=name, shape=array.shape)
        if array.dtype == object:
            tensor.datatype = "BYTES"
            tensor.contents.bytes_contents.extend(str(v).encode() for v in array.ravel())
        else:
            tensor.datatype = "FP32"
            tensor.contents.fp32_contents.extend(array.ravel().tolist())
    return request


def raw_infer_request(model: str, feeds: dict[str, np.ndarray[Any, Any]]) -> oip.ModelInferRequest:
    """ModelInfer with raw_input_contents, as tritonclient sends it."""
    request = oip.ModelInferRequest(model_name=model)
    for name, array in feeds.items():
        datatype = "BYTES" if array.dtype == object else "FP32"
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        if datatype == "BYTES":
            request.raw_input_contents.append(
                b"".join(len(s.encode()).to_bytes(4, "little") + s.encode() for s in array.ravel())
            )
        else:
            request.raw_input_contents.append(np.ascontiguousarray(array, "<f4").tobytes())
    return request


async def register_champion_and_candidate(
    publisher: Publisher,
    trained_topic: str,
    registry: str,
    model: str,
    store: ArtifactStore,
    champion: bytes,
    candidate: bytes,
) -> list[registry_pb2.ModelVersion]:
    """v1 and v2 of `model` announced on `trained_topic` as the trainer does,
    v2 scoring worse so the registry's gate keeps it a candidate; the versions
    once the registry at `registry` lists both."""
    for message in (
        model_trained(model, store.put(champion), "run-1", 0.80),
        model_trained(
            model,
            store.put(candidate),
            "run-2",
            0.70,
            champion_metrics={"roc_auc": 0.80},
            champion_version=1,
        ),
    ):
        await publisher.publish(
            trained_topic,
            message.SerializeToString(),
            key=model,
            ce_type="driftloop.model.trained.v1",
        )
    async with grpc.aio.insecure_channel(registry) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        deadline = time.monotonic() + 30
        while True:
            listed = await stub.ListVersions(registry_pb2.ListVersionsRequest(model=model))
            if len(listed.versions) == 2:
                return list(listed.versions)
            assert time.monotonic() < deadline, "v1 and v2 not registered"
            await asyncio.sleep(0.1)
