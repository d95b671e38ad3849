"""ONNX export, the signature serving codes against, parity and reference distributions.

The contract with inference: one input tensor per model feature, named after it,
shape [-1, 1]; numbers (float, int, bool, aggregates) as FP32 with NaN for a
missing value, categories as BYTES (UTF-8 strings, "" when missing). Outputs are
`label` (INT64 [-1]) and `probabilities` (FP32 [-1, 2], column 1 is the positive
class). Per-feature tensors let a server fill each input straight from a feature
vector by name, with no knowledge of column order.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from driftloop.v1 import common_pb2
from driftloop_core.featureset import FeatureSet
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph, InvalidProtobuf
from skl2onnx import convert_sklearn
from skl2onnx.common import tree_ensemble
from skl2onnx.common.data_types import FloatTensorType, StringTensorType
from sklearn.pipeline import Pipeline

from driftloop_trainer.training import (
    FloatArray,
    TrainingData,
    TrainingError,
    is_categorical,
)

PARITY_TOLERANCE = 1e-4
PROBABILITIES = "probabilities"
LABEL = "label"
TARGET_OPSET = 17
QUANTILE_BINS = 10
SAMPLE_SIZE = 200

# ONNX TensorProto element types to Open Inference Protocol datatypes.
_OIP_TYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.DOUBLE: "FP64",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.INT16: "INT16",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.UINT16: "UINT16",
    onnx.TensorProto.UINT32: "UINT32",
    onnx.TensorProto.UINT64: "UINT64",
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.STRING: "BYTES",
}


def _patch_skl2onnx_missing_tracks() -> None:
    """Work around skl2onnx 1.20 with onnx >= 1.23: its HistGradientBoosting
    converter passes Python/numpy booleans as `nodes_missing_value_tracks_true`,
    an INTS attribute that onnx now refuses. Cast them to int before they are
    recorded; idempotent."""
    if getattr(tree_ensemble.add_node, "_driftloop_patched", False):
        return
    original = tree_ensemble.add_node

    def add_node(*args: Any, **kwargs: Any) -> Any:
        if "nodes_missing_value_tracks_true" in kwargs:
            kwargs["nodes_missing_value_tracks_true"] = int(
                kwargs["nodes_missing_value_tracks_true"]
            )
        return original(*args, **kwargs)

    add_node._driftloop_patched = True  # type: ignore[attr-defined]
    tree_ensemble.add_node = add_node


def export_onnx(pipeline: Pipeline, featureset: FeatureSet, model_name: str) -> bytes:
    """The fitted pipeline as ONNX bytes, probabilities as a plain tensor."""
    initial_types: list[tuple[str, Any]] = [
        (
            name,
            StringTensorType([None, 1])
            if is_categorical(featureset, name)
            else FloatTensorType([None, 1]),
        )
        for name in featureset.model.features
    ]
    classifier = pipeline.steps[-1][1]
    _patch_skl2onnx_missing_tracks()
    try:
        model = convert_sklearn(
            pipeline,
            name=model_name,
            initial_types=initial_types,
            options={id(classifier): {"zipmap": False}},
            target_opset=TARGET_OPSET,
        )
    except (RuntimeError, TypeError, ValueError, NotImplementedError) as error:
        raise TrainingError(
            "export", f"skl2onnx cannot convert the pipeline: {str(error)[:300]}"
        ) from None
    data: bytes = model.SerializeToString()
    return data


def _dims(value_info: onnx.ValueInfoProto) -> list[int]:
    return [
        dim.dim_value if dim.HasField("dim_value") else -1
        for dim in value_info.type.tensor_type.shape.dim
    ]


def _spec(value_info: onnx.ValueInfoProto) -> common_pb2.TensorSpec:
    elem = value_info.type.tensor_type.elem_type
    return common_pb2.TensorSpec(
        name=value_info.name, datatype=_OIP_TYPES.get(elem, "BYTES"), shape=_dims(value_info)
    )


def signature_of(onnx_bytes: bytes) -> common_pb2.ModelSignature:
    """Inputs and outputs as the ONNX graph itself declares them."""
    graph = onnx.load_from_string(onnx_bytes).graph
    return common_pb2.ModelSignature(
        inputs=[_spec(item) for item in graph.input],
        outputs=[_spec(item) for item in graph.output],
    )


class OnnxClassifier:
    """An ONNX binary classifier run with onnxruntime on `TrainingData` columns."""

    def __init__(self, onnx_bytes: bytes) -> None:
        try:
            self._session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        except (Fail, InvalidGraph, InvalidProtobuf) as error:
            raise ValueError(f"not a loadable ONNX model: {error}") from error
        self.input_names = tuple(item.name for item in self._session.get_inputs())
        self._input_types = {item.name: item.type for item in self._session.get_inputs()}
        outputs = [item.name for item in self._session.get_outputs()]
        self._output = PROBABILITIES if PROBABILITIES in outputs else outputs[-1]

    def inputs(self, data: TrainingData) -> dict[str, np.ndarray[Any, Any]]:
        feeds: dict[str, np.ndarray[Any, Any]] = {}
        for name in self.input_names:
            if name not in data.columns:
                raise KeyError(f"the model needs input {name!r}, which the data lacks")
            column = data.columns[name]
            if self._input_types[name] == "tensor(string)":
                feeds[name] = np.asarray(column, dtype=object).astype(str).reshape(-1, 1)
            else:
                feeds[name] = np.asarray(column, dtype=np.float32).reshape(-1, 1)
        return feeds

    def positive_probability(self, data: TrainingData) -> FloatArray:
        (result,) = self._session.run([self._output], self.inputs(data))
        probabilities: FloatArray = np.asarray(result, dtype=np.float64)[:, 1]
        return probabilities


def check_parity(onnx_bytes: bytes, expected: FloatArray, data: TrainingData) -> float:
    """Max abs difference of ONNX and scikit-learn probabilities; raises beyond tolerance."""
    got = OnnxClassifier(onnx_bytes).positive_probability(data)
    diff = float(np.max(np.abs(got - expected))) if len(expected) else 0.0
    if not diff <= PARITY_TOLERANCE:
        raise TrainingError(
            "parity",
            f"ONNX probabilities differ from scikit-learn by {diff:.3g} "
            f"(tolerance {PARITY_TOLERANCE})",
        )
    return diff


def reference_distributions(
    data: TrainingData, featureset: FeatureSet, seed: int = 0
) -> dict[str, common_pb2.ReferenceDistribution]:
    """Each input feature's distribution on the rows the model was fitted on."""
    out: dict[str, common_pb2.ReferenceDistribution] = {}
    rng = np.random.default_rng(seed)
    for name in data.feature_names:
        column = data.columns[name]
        count = len(column)
        if is_categorical(featureset, name):
            values = np.asarray(column, dtype=object).astype(str)
            present = values[values != ""]
            categories, counts = np.unique(present, return_counts=True)
            total = max(int(counts.sum()), 1)
            out[name] = common_pb2.ReferenceDistribution(
                categorical=common_pb2.CategoricalDistribution(
                    frequencies={
                        str(c): float(n) / total for c, n in zip(categories, counts, strict=True)
                    }
                ),
                count=count,
                missing_fraction=(count - len(present)) / count if count else 0.0,
            )
            continue
        numbers = np.asarray(column, dtype=np.float64)
        present_numbers = numbers[~np.isnan(numbers)]
        out[name] = common_pb2.ReferenceDistribution(
            numeric=_numeric_distribution(present_numbers, rng),
            count=count,
            missing_fraction=(count - len(present_numbers)) / count if count else 0.0,
        )
    return out


def _numeric_distribution(
    values: FloatArray, rng: np.random.Generator
) -> common_pb2.NumericDistribution:
    if len(values) == 0:
        return common_pb2.NumericDistribution()
    edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, QUANTILE_BINS + 1)))
    if len(edges) == 1:
        edges = np.array([edges[0], edges[0] + 1.0])
    # Bin i holds edges[i] <= x < edges[i+1]; the last edge's values go in the last bin.
    index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
    counts = np.bincount(index, minlength=len(edges) - 1)
    sample = values if len(values) <= SAMPLE_SIZE else rng.choice(values, SAMPLE_SIZE, False)
    return common_pb2.NumericDistribution(
        edges=[float(e) for e in edges],
        fractions=[float(c) / len(values) for c in counts],
        sample=[float(v) for v in sample if math.isfinite(v)],
    )
