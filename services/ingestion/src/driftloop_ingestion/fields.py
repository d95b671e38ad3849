"""The checks of the feature set's fields, compiled once per declared field.

A check takes a decoded JSON value and returns it converted to the field's
declared type, or raises `Invalid` with the rule it broke. The valid path never
raises, so the checks cost little on the bulk of events that pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Final

from driftloop_core.featureset import FieldSpec

from driftloop_ingestion.rules import (
    RULE_CATEGORY,
    RULE_MAX,
    RULE_MIN,
    RULE_TYPE,
    show,
    show_number,
)

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1

FieldValue = float | int | str | bool
FieldCheck = Callable[[Any], FieldValue]


class Invalid(Exception):
    """Raised by a field check; cheap because the valid path never raises."""

    def __init__(self, rule: str, reason: str) -> None:
        self.rule = rule
        self.reason = reason


def _float_check(name: str, spec: FieldSpec) -> FieldCheck:
    low, high = spec.min, spec.max

    def check(value: Any) -> FieldValue:
        kind = type(value)
        if kind is int:
            try:
                value = float(value)
            except OverflowError:
                raise Invalid(RULE_TYPE, f"{name}: must be a finite number, got {value}") from None
        elif kind is not float:
            raise Invalid(RULE_TYPE, f"{name}: must be a number, got {show(value)}")
        elif not math.isfinite(value):
            raise Invalid(RULE_TYPE, f"{name}: must be a finite number, got {value}")
        if low is not None and value < low:
            raise Invalid(
                RULE_MIN, f"{name}: must be >= {show_number(low)}, got {show_number(value)}"
            )
        if high is not None and value > high:
            raise Invalid(
                RULE_MAX, f"{name}: must be <= {show_number(high)}, got {show_number(value)}"
            )
        return float(value)

    return check


def _int_check(name: str, spec: FieldSpec) -> FieldCheck:
    low, high = spec.min, spec.max

    def check(value: Any) -> FieldValue:
        kind = type(value)
        if kind is float and math.isfinite(value) and value.is_integer():
            value = int(value)
        elif kind is not int:
            raise Invalid(RULE_TYPE, f"{name}: must be an integer, got {show(value)}")
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise Invalid(RULE_TYPE, f"{name}: must fit in 64 bits, got {value}")
        if low is not None and value < low:
            raise Invalid(RULE_MIN, f"{name}: must be >= {show_number(low)}, got {value}")
        if high is not None and value > high:
            raise Invalid(RULE_MAX, f"{name}: must be <= {show_number(high)}, got {value}")
        return int(value)

    return check


def _category_check(name: str, spec: FieldSpec) -> FieldCheck:
    allowed = frozenset(spec.values or ())
    listed = ", ".join(spec.values or ())

    def check(value: Any) -> FieldValue:
        if type(value) is not str:
            raise Invalid(
                RULE_TYPE, f"{name}: must be a string, one of {listed}, got {show(value)}"
            )
        if value not in allowed:
            raise Invalid(RULE_CATEGORY, f"{name}: must be one of {listed}, got {show(value)}")
        return str(value)

    return check


def _exact_check(
    kind: type[bool] | type[str], spelled: str
) -> Callable[[str, FieldSpec], FieldCheck]:
    """A field that takes one JSON type as it is (a bool field no 0 or 1)."""

    def compile_check(name: str, spec: FieldSpec) -> FieldCheck:
        def check(value: Any) -> FieldValue:
            if type(value) is not kind:
                raise Invalid(RULE_TYPE, f"{name}: must be {spelled}, got {show(value)}")
            taken: FieldValue = kind(value)
            return taken

        return check

    return compile_check


_CHECKS: dict[str, Callable[[str, FieldSpec], FieldCheck]] = {
    "float": _float_check,
    "int": _int_check,
    "category": _category_check,
    "bool": _exact_check(bool, "true or false"),
    "string": _exact_check(str, "a string"),
}


def field_check(name: str, spec: FieldSpec) -> FieldCheck:
    """The check of field `name` as `spec` declares it."""
    return _CHECKS[spec.type](name, spec)
