"""Feature values between Python and `driftloop.v1.FeatureValue`, written once.

FeatureValue has no bool: a bool travels as int 0/1. Every service that puts a
value into a FeatureValue or takes one out goes through here, so the rule is
the same for the online store, the offline log, inference and drift.
"""

from __future__ import annotations

from typing import Any

from driftloop.v1 import common_pb2

from driftloop_core.featureset import FieldType

Value = float | int | str


def fill_feature_value(target: common_pb2.FeatureValue, value: Value | bool) -> None:
    """Fill a FeatureValue in place (cheaper than building one and copying it)."""
    if isinstance(value, bool):
        target.int_value = int(value)
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.float_value = value
    else:
        target.string_value = str(value)


def to_feature_value(value: Value | bool) -> common_pb2.FeatureValue:
    """A Python value as FeatureValue, its kind taken from the value's type."""
    result = common_pb2.FeatureValue()
    fill_feature_value(result, value)
    return result


def typed_feature_value(field_type: FieldType, value: Any) -> common_pb2.FeatureValue:
    """A value as FeatureValue, its kind taken from the feature set's field type."""
    if field_type == "float":
        return common_pb2.FeatureValue(float_value=float(value))
    if field_type in ("int", "bool"):
        return common_pb2.FeatureValue(int_value=int(value))
    return common_pb2.FeatureValue(string_value=str(value))


def from_feature_value(value: common_pb2.FeatureValue) -> Value | None:
    """The Python value a FeatureValue holds; None when it holds none."""
    kind = value.WhichOneof("kind")
    if kind is None:
        return None
    result: Value = getattr(value, kind)
    return result
