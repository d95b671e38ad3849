"""The feature-set YAML, parsed and validated once.

One file drives every service: ingestion validates events against its fields,
the feature store computes its aggregations, the trainer builds the model it
names, drift watches its features. Loading fails early, and every error names
the file, the key path and the rule it broke, so a typo never reaches Kafka.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}

AggregationFn = Literal["count", "sum", "mean", "min", "max", "last"]
FieldType = Literal["float", "int", "category", "bool", "string"]
Task = Literal["binary_classification"]


class FeatureSetError(ValueError):
    """A feature-set file that cannot be used; `problems` lists (key, rule) pairs."""

    def __init__(self, path: Path | str, problems: list[tuple[str, str]]) -> None:
        self.path = str(path)
        self.problems = problems
        lines = [f"{self.path}: {key}: {rule}" for key, rule in problems]
        super().__init__("invalid feature set\n" + "\n".join(lines))


def parse_duration(value: Any) -> timedelta:
    """`10m`, `1h`, `30s`, `500ms`, `7d`, or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("must be a duration like 10m, 1h or 30s")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value).strip())
        if not match:
            raise ValueError(f"must be a duration like 10m, 1h or 30s, got {value!r}")
        seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError("must be a positive duration")
    return timedelta(seconds=seconds)


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldSpec(_Strict):
    type: FieldType
    min: float | None = None
    max: float | None = None
    values: tuple[str, ...] | None = None
    required: bool = True
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> FieldSpec:
        numeric = self.type in ("float", "int")
        if (self.min is not None or self.max is not None) and not numeric:
            raise ValueError(f"min/max only apply to float or int fields, not {self.type}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        if self.type == "category":
            if not self.values:
                raise ValueError("a category field needs a non-empty 'values' list")
            if len(set(self.values)) != len(self.values):
                raise ValueError("'values' must not repeat")
        elif self.values is not None:
            raise ValueError(f"'values' only applies to category fields, not {self.type}")
        return self

    @property
    def is_numeric(self) -> bool:
        return self.type in ("float", "int")


class Aggregation(_Strict):
    name: str
    field: str
    fn: AggregationFn
    window: Duration

    @field_validator("name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("must be an identifier (letters, digits, underscore)")
        return value


class ModelSpec(_Strict):
    task: Task = "binary_classification"
    features: tuple[str, ...]

    @field_validator("features")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("must list at least one feature")
        dupes = sorted({name for name in value if value.count(name) > 1})
        if dupes:
            raise ValueError(f"must not repeat features: {', '.join(dupes)}")
        return value


class PerformanceDriftSpec(_Strict):
    """Drift of the model's 0/1 error stream (prediction != true label)."""

    enabled: bool = True
    detector: Literal["adwin", "ddm"] = "adwin"
    # ADWIN's confidence: smaller means fewer false alarms and a later detection.
    delta: float = Field(default=0.002, gt=0, lt=1)
    # DDM: errors seen before it may fire, and the drift level in standard deviations.
    warm_start: int = Field(default=30, ge=1)
    drift_threshold: float = Field(default=3.0, gt=0)


class PsiSpec(_Strict):
    """Population stability index of a sliding window against the reference bins."""

    enabled: bool = True
    threshold: float = Field(default=0.25, gt=0)
    window: int = Field(default=500, ge=20)


class KswinSpec(_Strict):
    """Kolmogorov-Smirnov windowed test on numeric features (river's KSWIN)."""

    enabled: bool = True
    alpha: float = Field(default=0.00001, gt=0, lt=1)
    window: int = Field(default=500, ge=10)
    stat_size: int = Field(default=100, ge=5)
    # Test every n-th value only: a KS test per event would cost about a millisecond.
    stride: int = Field(default=5, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _sizes(self) -> KswinSpec:
        if 2 * self.stat_size > self.window:
            raise ValueError(
                f"stat_size ({self.stat_size}) must be at most half of window ({self.window})"
            )
        return self


class DriftSpec(_Strict):
    """How the drift service watches this feature set's model; every key is optional."""

    performance: PerformanceDriftSpec = Field(default_factory=PerformanceDriftSpec)
    psi: PsiSpec = Field(default_factory=PsiSpec)
    kswin: KswinSpec = Field(default_factory=KswinSpec)
    # Features watched for data drift; empty means every model feature.
    features: tuple[str, ...] = ()


class FeatureSet(_Strict):
    name: str
    entity: str
    timestamp: str
    label: str
    fields: dict[str, FieldSpec]
    aggregations: tuple[Aggregation, ...] = ()
    model: ModelSpec
    # How late an event may arrive and still be counted in its window.
    grace: Duration = timedelta(minutes=5)
    # Online features older than this are reported stale.
    staleness: Duration = timedelta(hours=24)
    drift: DriftSpec = Field(default_factory=DriftSpec)

    @field_validator("name", "entity", "timestamp", "label")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("must be an identifier (letters, digits, underscore)")
        return value

    @field_validator("fields")
    @classmethod
    def _field_names(cls, value: dict[str, FieldSpec]) -> dict[str, FieldSpec]:
        if not value:
            raise ValueError("must declare at least one field")
        bad = [name for name in value if not _NAME.match(name)]
        if bad:
            raise ValueError(f"field names must be identifiers: {', '.join(bad)}")
        return value

    @model_validator(mode="after")
    def _cross_references(self) -> FeatureSet:
        problems: list[str] = []
        # `correction` marks a late label that replaces an earlier one.
        reserved = {self.entity, self.timestamp, self.label, "event_id", "correction"}
        clashing = sorted(reserved & set(self.fields))
        if clashing:
            problems.append(
                "fields: must not redeclare entity/timestamp/label/event_id/correction: "
                + ", ".join(clashing)
            )
        seen: set[str] = set()
        for i, agg in enumerate(self.aggregations):
            where = f"aggregations[{i}]"
            spec = self.fields.get(agg.field)
            if spec is None:
                problems.append(f"{where}.field: unknown field {agg.field!r}")
            elif agg.fn not in ("count", "last") and not spec.is_numeric:
                problems.append(
                    f"{where}.fn: {agg.fn} needs a numeric field, {agg.field!r} is {spec.type}"
                )
            if agg.name in self.fields or agg.name in seen:
                problems.append(f"{where}.name: {agg.name!r} is already a field or aggregation")
            seen.add(agg.name)
        known = set(self.fields) | seen
        for i, feature in enumerate(self.model.features):
            if feature not in known:
                problems.append(
                    f"model.features[{i}]: unknown feature {feature!r} "
                    "(must be a field or an aggregation)"
                )
        for i, feature in enumerate(self.drift.features):
            if feature not in self.model.features:
                problems.append(
                    f"drift.features[{i}]: unknown feature {feature!r} (must be a model feature)"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def drift_features(self) -> tuple[str, ...]:
        """The features watched for data drift: `drift.features`, else every model feature."""
        return self.drift.features or self.model.features

    @property
    def aggregation_names(self) -> tuple[str, ...]:
        return tuple(agg.name for agg in self.aggregations)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Every feature a model may use: raw fields, then aggregations."""
        return tuple(self.fields) + self.aggregation_names

    def feature_type(self, name: str) -> FieldType:
        """The model-facing type of a feature: aggregations other than `last` are numeric."""
        if name in self.fields:
            return self.fields[name].type
        agg = next(a for a in self.aggregations if a.name == name)
        if agg.fn == "last":
            return self.fields[agg.field].type
        return "int" if agg.fn == "count" else "float"


def _problems(error: ValidationError) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for item in error.errors():
        key = ""
        for part in item["loc"]:
            key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "missing":
            message = "required key is missing"
        for sub in message.split("; "):
            # Cross-reference errors carry their own key path in front.
            if ": " in sub and not key:
                sub_key, _, sub_rule = sub.partition(": ")
                problems.append((sub_key, sub_rule))
            else:
                problems.append((key or "(top level)", sub))
    return problems


def parse_featureset(data: Mapping[str, Any], source: Path | str = "<featureset>") -> FeatureSet:
    try:
        return FeatureSet.model_validate(data)
    except ValidationError as error:
        raise FeatureSetError(source, _problems(error)) from None


def load_featureset(path: Path | str) -> FeatureSet:
    """Read and validate a feature-set YAML file; raise `FeatureSetError` naming every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise FeatureSetError(path, [("(file)", f"cannot be read: {error.strerror}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        raise FeatureSetError(path, [(where, f"is not valid YAML: {error}")]) from None
    if not isinstance(data, Mapping):
        raise FeatureSetError(path, [("(top level)", "must be a mapping of keys to values")])
    return parse_featureset(data, path)


def default_featureset_path() -> Path:
    """The built-in payments feature set used when none is given."""
    return Path(__file__).parent / "data" / "payments.yaml"
