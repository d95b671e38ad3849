"""The offline log of the feature store: what it holds and how a record enters it.

Training rows must equal what serving saw, so the online side does not keep
history itself: for every observation it publishes the point-in-time feature
vector (a `TrainingRow`) to `features.offline`, and every late label after it.
This module says what those records are (`offline_row`, `offline_label`), how
one becomes a row of the log (`decode_record`, or `PoisonMessage`), and the
schemas of the log's files and of training sets. Writing the log is
`adapters.parquet_log`, reading it `adapters.duckdb_reader`, consuming the topic
`entrypoints.offline_sink`.

Every training set is a file under `DRIFTLOOP_HOME/datasets/` (the trainer reads
it there); `DatasetSettings.datasets_kept` bounds how many stay per model, so
GetTrainingSet calls cannot fill the disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from driftloop.v1 import common_pb2, events_pb2, features_pb2
from driftloop_core.featureset import FeatureSet, FieldType
from driftloop_core.kafka import Outgoing, PoisonMessage, Record, Topics
from driftloop_core.kafka.topics import kind_of_message
from driftloop_core.settings import Settings
from google.protobuf.message import DecodeError
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ROW_TYPE = kind_of_message("driftloop.v1.TrainingRow").ce_type
LABEL_TYPE = kind_of_message("driftloop.v1.Label").ce_type
# TrainingRow.label is a plain int64, so whether the observation carried its
# label travels beside it as a header: "1" or "0".
HAS_LABEL_HEADER = "has_label"

# Columns of the log and of training sets besides the features; a feature may
# not take one of these names.
RESERVED_COLUMNS = frozenset(
    {
        "event_id",
        "entity_id",
        "event_time",
        "label",
        "has_label",
        "ingested_at",
        "feature_set",
        "source_partition",
        "source_offset",
        "source_timestamp",
    }
)

TIMESTAMP = pa.timestamp("ms", tz="UTC")
_ARROW_TYPES: dict[FieldType, pa.DataType] = {
    "float": pa.float64(),
    "int": pa.int64(),
    "category": pa.string(),
    "string": pa.string(),
    "bool": pa.bool_(),
}


class DatasetSettings(BaseSettings):
    """The training-set files' knobs, read from `DRIFTLOOP_FEATURES_*`."""

    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_FEATURES_", extra="ignore")

    # Training-set files kept per model: each GetTrainingSet whose rows differ
    # from every earlier one writes a new file, and the oldest beyond this many
    # are deleted then. A trainer reads its file right after the call; more
    # calls than this in between (a flood of them) make its run fail at
    # load_data, to be retried, rather than the disk fill.
    datasets_kept: int = Field(default=8, ge=1)


class InvalidWindowError(ValueError):
    """A `DataWindow` that selects nothing meaningful (last_n < 1, start >= end)."""


class UnknownModelError(LookupError):
    """A training set asked for a model this feature store does not serve."""


def check_feature_names(featureset: FeatureSet) -> None:
    clashing = sorted(RESERVED_COLUMNS & set(featureset.model.features))
    if clashing:
        raise ValueError(
            f"feature set {featureset.name}: model features clash with offline log "
            f"columns: {', '.join(clashing)}"
        )


def arrow_type(feature_type: FieldType) -> pa.DataType:
    """The Parquet column type of a feature: float64, int64, string or bool."""
    return _ARROW_TYPES[feature_type]


def feature_fields(featureset: FeatureSet) -> list[pa.Field]:
    """One nullable typed column per model feature, in the model's order."""
    return [
        pa.field(name, arrow_type(featureset.feature_type(name)))
        for name in featureset.model.features
    ]


def rows_schema(featureset: FeatureSet) -> pa.Schema:
    """Schema of the row files of the log (`offline/<feature set>/rows/*.parquet`)."""
    check_feature_names(featureset)
    return pa.schema(
        [
            pa.field("event_id", pa.string(), nullable=False),
            pa.field("entity_id", pa.string(), nullable=False),
            pa.field("event_time", TIMESTAMP, nullable=False),
            *feature_fields(featureset),
            pa.field("has_label", pa.bool_(), nullable=False),
            pa.field("label", pa.int64()),
            pa.field("source_partition", pa.int32(), nullable=False),
            pa.field("source_offset", pa.int64(), nullable=False),
            pa.field("source_timestamp", TIMESTAMP, nullable=False),
        ]
    )


def labels_schema() -> pa.Schema:
    """Schema of the label files of the log (`offline/<feature set>/labels/*.parquet`)."""
    return pa.schema(
        [
            pa.field("event_id", pa.string(), nullable=False),
            pa.field("entity_id", pa.string(), nullable=False),
            pa.field("label", pa.int64(), nullable=False),
            pa.field("ingested_at", TIMESTAMP),
            pa.field("event_time", TIMESTAMP),
            pa.field("feature_set", pa.string(), nullable=False),
            pa.field("source_partition", pa.int32(), nullable=False),
            pa.field("source_offset", pa.int64(), nullable=False),
            pa.field("source_timestamp", TIMESTAMP, nullable=False),
        ]
    )


def dataset_schema(featureset: FeatureSet) -> pa.Schema:
    """Schema of a training-set file: ids, event time, model features, label."""
    check_feature_names(featureset)
    return pa.schema(
        [
            pa.field("event_id", pa.string(), nullable=False),
            pa.field("entity_id", pa.string(), nullable=False),
            pa.field("event_time", TIMESTAMP, nullable=False),
            *feature_fields(featureset),
            pa.field("label", pa.int64(), nullable=False),
        ]
    )


def offline_dir(settings: Settings, featureset: FeatureSet) -> Path:
    """Root of the feature set's log; `rows/` and `labels/` below it."""
    return settings.home / "offline" / featureset.name


def datasets_dir(settings: Settings) -> Path:
    return settings.home / "datasets"


def offline_row(
    row: features_pb2.TrainingRow, *, has_label: bool, topic: str = Topics.FEATURES_OFFLINE
) -> Outgoing:
    """The record the online side publishes for one observation's point-in-time row."""
    return Outgoing(
        topic,
        row.SerializeToString(),
        key=row.entity_id,
        ce_type=ROW_TYPE,
        event_id=row.event_id,
        extra_headers={HAS_LABEL_HEADER: "1" if has_label else "0"},
    )


def offline_label(
    label: events_pb2.Label, *, event_id: str | None = None, topic: str = Topics.FEATURES_OFFLINE
) -> Outgoing:
    """The record the online side publishes for a late label."""
    return Outgoing(
        topic, label.SerializeToString(), key=label.entity_id, ce_type=LABEL_TYPE, event_id=event_id
    )


Kind = Literal["row", "label"]


def decode_record(record: Record, featureset: FeatureSet) -> tuple[Kind, dict[str, Any]]:
    """One `features.offline` record as a log row (column -> value), or PoisonMessage."""
    if record.headers.type == ROW_TYPE:
        return "row", _decode_row(record, featureset)
    if record.headers.type == LABEL_TYPE:
        return "label", _decode_label(record, featureset)
    raise PoisonMessage(
        f"unexpected ce_type {record.headers.type!r} on {record.topic}",
        field="ce_type",
        rule="unknown_type",
    )


def _source_columns(record: Record) -> dict[str, Any]:
    return {
        "source_partition": record.partition,
        "source_offset": record.offset,
        "source_timestamp": record.timestamp_ms,
    }


def _decode_row(record: Record, featureset: FeatureSet) -> dict[str, Any]:
    row = features_pb2.TrainingRow()
    try:
        row.ParseFromString(record.value)
    except DecodeError as error:
        raise PoisonMessage(
            f"not a driftloop.v1.TrainingRow: {error}", field="value", rule="decode"
        ) from None
    for name in ("event_id", "entity_id"):
        if not getattr(row, name):
            raise PoisonMessage(
                f"training row without {name}", field=name, rule="required", event_id=row.event_id
            )
    if not row.HasField("event_time"):
        raise PoisonMessage(
            "training row without event_time",
            field="event_time",
            rule="required",
            event_id=row.event_id,
        )
    flag = record.headers.extra.get(HAS_LABEL_HEADER)
    if flag is None:
        # Without the header only a non-zero label can have been set on purpose.
        has_label = row.label != 0
    elif flag in ("1", "0"):
        has_label = flag == "1"
    else:
        raise PoisonMessage(
            f"header {HAS_LABEL_HEADER} must be 1 or 0, got {flag!r}",
            field=HAS_LABEL_HEADER,
            rule="type",
            event_id=row.event_id,
        )
    columns: dict[str, Any] = {
        "event_id": row.event_id,
        "entity_id": row.entity_id,
        "event_time": row.event_time.ToMilliseconds(),
        "has_label": has_label,
        "label": row.label if has_label else None,
        **_source_columns(record),
    }
    known = set(featureset.feature_names)
    model = set(featureset.model.features)
    for name, value in row.features.items():
        if name not in known:
            raise PoisonMessage(
                f"unknown feature {name!r}",
                field=f"features.{name}",
                rule="unknown_feature",
                event_id=row.event_id,
            )
        if name in model:
            columns[name] = _typed(name, featureset.feature_type(name), value, row.event_id)
    return columns


def _typed(
    name: str, feature_type: FieldType, value: common_pb2.FeatureValue, event_id: str
) -> Any:
    kind = value.WhichOneof("kind")
    if kind is None:
        return None
    if feature_type == "float" and kind in ("float_value", "int_value"):
        return float(getattr(value, kind))
    if feature_type == "int" and kind == "int_value":
        return value.int_value
    if feature_type in ("category", "string") and kind == "string_value":
        return value.string_value
    if feature_type == "bool":
        # FeatureValue has no bool: 0/1 as int_value, or "true"/"false".
        if kind == "int_value" and value.int_value in (0, 1):
            return value.int_value == 1
        if kind == "string_value" and value.string_value in ("true", "false"):
            return value.string_value == "true"
    raise PoisonMessage(
        f"feature {name!r} is {feature_type}, got {kind}",
        field=f"features.{name}",
        rule="type",
        event_id=event_id,
    )


def _decode_label(record: Record, featureset: FeatureSet) -> dict[str, Any]:
    label = events_pb2.Label()
    try:
        label.ParseFromString(record.value)
    except DecodeError as error:
        raise PoisonMessage(
            f"not a driftloop.v1.Label: {error}", field="value", rule="decode"
        ) from None
    if not label.event_id:
        raise PoisonMessage("label without event_id", field="event_id", rule="required")
    if label.feature_set and label.feature_set != featureset.name:
        raise PoisonMessage(
            f"label of feature set {label.feature_set!r}, this log is {featureset.name!r}",
            field="feature_set",
            rule="unknown_feature_set",
            event_id=label.event_id,
        )
    return {
        "event_id": label.event_id,
        "entity_id": label.entity_id,
        "label": label.label,
        "ingested_at": (
            label.ingested_at.ToMilliseconds() if label.HasField("ingested_at") else None
        ),
        "event_time": label.event_time.ToMilliseconds() if label.HasField("event_time") else None,
        "feature_set": featureset.name,
        **_source_columns(record),
    }
