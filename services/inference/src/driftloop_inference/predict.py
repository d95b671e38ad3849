"""Predict's pure parts: feature values into one-row model inputs, and a model's
outputs into a decision.

A model Predict can serve takes one `[-1, 1]` (or `[-1]`) tensor per feature,
named after it, and has a `label` or a `probabilities` output (the trainer's
ONNX export has both).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from driftloop.v1 import common_pb2
from driftloop_core.featureset import FeatureSet

from driftloop_inference.errors import InvalidInput, UnsupportedModel
from driftloop_inference.model import Array, ServedModel, TensorSpec

LABEL = "label"
PROBABILITIES = "probabilities"
_INTEGER = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "BOOL"}
Defaults = Mapping[str, float | str]


def check_signature(model: ServedModel) -> None:
    """Raise UnsupportedModel unless every input is one feature's column."""
    for spec in model.inputs:
        if len(spec.shape) not in (1, 2) or spec.shape[1:] not in ((), (1,), (-1,)):
            raise UnsupportedModel(
                f"model {model.name} v{model.version}: Predict needs one [-1, 1] input per "
                f"feature; input '{spec.name}' is {spec.describe()}"
            )


def default_value(spec: TensorSpec, defaults: Defaults) -> common_pb2.FeatureValue:
    """The configured default, else what the trainer writes for a missing value:
    NaN for numbers, 0 for integers, "" for categories."""
    configured = defaults.get(spec.name)
    if configured is None:
        if spec.datatype == "BYTES":
            return common_pb2.FeatureValue(string_value="")
        if spec.datatype in _INTEGER:
            return common_pb2.FeatureValue(int_value=0)
        return common_pb2.FeatureValue(float_value=math.nan)
    if isinstance(configured, str):
        return common_pb2.FeatureValue(string_value=configured)
    return common_pb2.FeatureValue(float_value=float(configured))


def convert(
    spec: TensorSpec, value: common_pb2.FeatureValue
) -> tuple[Any, common_pb2.FeatureValue]:
    """The value for the input tensor, and the FeatureValue reported as used."""
    kind = value.WhichOneof("kind")
    raw: Any = getattr(value, kind) if kind else None
    if spec.datatype == "BYTES":
        text = raw if isinstance(raw, str) else ("" if raw is None else str(raw))
        return text, common_pb2.FeatureValue(string_value=text)
    if isinstance(raw, str):
        try:
            raw = float(raw)
        except ValueError:
            raise InvalidInput(
                f"feature '{spec.name}': expected a number ({spec.datatype}), got {raw!r}",
                field=spec.name,
                rule="number",
            ) from None
    if spec.datatype in _INTEGER:
        if isinstance(raw, float) and not raw.is_integer():
            raise InvalidInput(
                f"feature '{spec.name}': expected an integer ({spec.datatype}), got {raw!r}",
                field=spec.name,
                rule="integer",
            )
        number = int(raw)
        return number, common_pb2.FeatureValue(int_value=number)
    number_f = float(raw)
    return number_f, common_pb2.FeatureValue(float_value=number_f)


def feature_values(
    specs: Iterable[TensorSpec],
    given: Mapping[str, common_pb2.FeatureValue],
    online: Mapping[str, common_pb2.FeatureValue],
    defaults: Defaults,
) -> tuple[dict[str, Any], dict[str, common_pb2.FeatureValue], list[str]]:
    """Each input's value from the request's features first, then the online
    ones, then its default: the value as the input takes it, the FeatureValue
    reported as used, and the features that took a default."""
    values: dict[str, Any] = {}
    used: dict[str, common_pb2.FeatureValue] = {}
    missing: list[str] = []
    for spec in specs:
        value = given.get(spec.name) if spec.name in given else online.get(spec.name)
        if value is None or value.WhichOneof("kind") is None:
            missing.append(spec.name)
            value = default_value(spec, defaults)
        values[spec.name], used[spec.name] = convert(spec, value)
    return values, used, missing


def feature_inputs(
    model: ServedModel,
    given: Mapping[str, common_pb2.FeatureValue],
    online: Mapping[str, common_pb2.FeatureValue],
    defaults: Defaults,
) -> tuple[dict[str, Array], dict[str, common_pb2.FeatureValue], list[str]]:
    """One-row inputs from the request's features first, then the online ones,
    then defaults; with the values used and the features that took a default."""
    values, used, missing = feature_values(model.inputs, given, online, defaults)
    feeds: dict[str, Array] = {}
    for spec in model.inputs:
        shape = (1,) * len(spec.shape)
        if spec.datatype == "BYTES":
            array = np.empty(shape, dtype=object)
            array.fill(values[spec.name])
        else:
            array = np.full(shape, values[spec.name], dtype=spec.dtype)
        feeds[spec.name] = array
    return feeds, used, missing


def featureset_inputs(featureset: FeatureSet) -> tuple[TensorSpec, ...]:
    """The model's inputs as the trainer exports them (categories BYTES, every
    other feature FP32, each `[-1, 1]`): what Predict fills before any version
    is loaded."""
    return tuple(
        TensorSpec(
            name,
            "BYTES" if featureset.feature_type(name) in ("category", "string") else "FP32",
            (-1, 1),
        )
        for name in featureset.model.features
    )


def decide(model: ServedModel, outputs: list[Array]) -> tuple[int, float]:
    """The label and the positive class's probability (NaN without one)."""
    by_name = dict(zip(model.output_names, outputs, strict=True))
    probability = math.nan
    probs = by_name.get(PROBABILITIES)
    if probs is not None:
        flat = np.asarray(probs).reshape(1, -1)[0]
        probability = float(flat[1] if flat.size >= 2 else flat[0])
    labels = by_name.get(LABEL)
    if labels is not None:
        return int(np.asarray(labels).ravel()[0]), probability
    if probs is not None:
        return int(probability >= 0.5), probability
    raise UnsupportedModel(
        f"model {model.name} v{model.version} has neither a '{LABEL}' nor a "
        f"'{PROBABILITIES}' output"
    )
