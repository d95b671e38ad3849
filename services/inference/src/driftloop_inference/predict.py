"""Predict's pure parts: feature values into one-row model inputs, and a model's
outputs into a decision.

A model Predict can serve takes one `[-1, 1]` (or `[-1]`) tensor per feature,
named after it, and has a `label` or a `probabilities` output (the trainer's
ONNX export has both).

What the model is fed must be a value of its input's type. A number from the
request must be finite once converted to that type (NaN, inf, and 1e400 or
1e39 for an FP32 input are refused as InvalidInput): the feature set declares
no feature that may take them. A number from the feature store that is not is
taken as missing, so its default applies and `defaults_applied` names it; a
configured default is the operator's and taken as it is. Text values have at
most `MAX_TEXT_BYTES`, and integers must fit their input's type.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from driftloop.v1 import common_pb2
from driftloop_core.featureset import FeatureSet

from driftloop_inference.errors import InvalidInput, UnsupportedModel
from driftloop_inference.model import NUMPY_TYPES, Array, ServedModel, TensorSpec

LABEL = "label"
PROBABILITIES = "probabilities"
_INTEGER = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "BOOL"}
# The largest finite value of each float type: beyond it a number becomes inf.
_FLOAT_MAX = {name: float(np.finfo(NUMPY_TYPES[name]).max) for name in ("FP16", "FP32", "FP64")}
# The range of each integer type (BOOL takes 0 and 1).
_INTEGER_RANGE = {
    name: (0, 1) if name == "BOOL" else (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
    for name, dtype in NUMPY_TYPES.items()
    if name in _INTEGER
}
# The most UTF-8 bytes of a text feature value (categories are short names; a
# value is published with every prediction).
MAX_TEXT_BYTES = 4096
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
    """The value for the input tensor, and the FeatureValue reported as used.

    A number for a float input comes out as it is, finite in the input's type or
    not (`finite` says); anything else that does not fit the input is refused
    as InvalidInput."""
    kind = value.WhichOneof("kind")
    raw: Any = getattr(value, kind) if kind else None
    if spec.datatype == "BYTES":
        text = raw if isinstance(raw, str) else ("" if raw is None else str(raw))
        if len(text) * 4 > MAX_TEXT_BYTES and len(text.encode()) > MAX_TEXT_BYTES:
            raise InvalidInput(
                f"feature '{spec.name}': {len(text.encode())} bytes of text; a value may have "
                f"at most {MAX_TEXT_BYTES} bytes (UTF-8)",
                field=spec.name,
                rule=f"at most {MAX_TEXT_BYTES} bytes",
            )
        return text, common_pb2.FeatureValue(string_value=text)
    if isinstance(raw, str):
        try:
            raw = float(raw)
        except ValueError:
            raise InvalidInput(
                f"feature '{spec.name}': expected a number ({spec.datatype}), got {_shown(raw)}",
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
        low, high = _INTEGER_RANGE[spec.datatype]
        if not low <= number <= high:
            raise InvalidInput(
                f"feature '{spec.name}': {number} is out of range for {spec.datatype} "
                f"[{low}, {high}]",
                field=spec.name,
                rule="range",
            )
        return number, common_pb2.FeatureValue(int_value=number)
    number_f = float(raw)
    return number_f, common_pb2.FeatureValue(float_value=number_f)


def finite(spec: TensorSpec, number: Any) -> bool:
    """False for a number that is NaN, infinite, or becomes inf in the input's type."""
    if not isinstance(number, float):
        return True
    return math.isfinite(number) and abs(number) <= _FLOAT_MAX.get(spec.datatype, math.inf)


def _not_finite(spec: TensorSpec, number: float) -> InvalidInput:
    if math.isfinite(number):
        reason = f"is beyond the range of {spec.datatype} (±{_FLOAT_MAX[spec.datatype]:.7g})"
    else:
        reason = "is not a finite number"
    return InvalidInput(
        f"feature '{spec.name}': {number!r} {reason}; Predict takes finite numbers only",
        field=spec.name,
        rule="finite",
    )


def _shown(text: str) -> str:
    """A caller's text, quoted, cut short enough for an error message."""
    return repr(text if len(text) <= 64 else text[:64] + "...")


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
        name = spec.name
        from_request = name in given
        value = given.get(name) if from_request else online.get(name)
        if value is not None and value.WhichOneof("kind") is not None:
            number, reported = convert(spec, value)
            if finite(spec, number):
                values[name], used[name] = number, reported
                continue
            if from_request:
                raise _not_finite(spec, number)
        missing.append(name)
        values[name], used[name] = convert(spec, default_value(spec, defaults))
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
    """The label and the positive class's probability (NaN without one).

    A probability the model gives that is not a finite number is refused as
    InvalidInput: no Prediction carries one."""
    by_name = dict(zip(model.output_names, outputs, strict=True))
    probability = math.nan
    probs = by_name.get(PROBABILITIES)
    if probs is not None:
        flat = np.asarray(probs).reshape(1, -1)[0]
        probability = float(flat[1] if flat.size >= 2 else flat[0])
        if not math.isfinite(probability):
            raise InvalidInput(
                f"model {model.name} v{model.version} answered probability {probability} "
                "for these features: not a finite number",
                field=PROBABILITIES,
                rule="finite",
            )
    labels = by_name.get(LABEL)
    if labels is not None:
        return int(np.asarray(labels).ravel()[0]), probability
    if probs is not None:
        return int(probability >= 0.5), probability
    raise UnsupportedModel(
        f"model {model.name} v{model.version} has neither a '{LABEL}' nor a "
        f"'{PROBABILITIES}' output"
    )
