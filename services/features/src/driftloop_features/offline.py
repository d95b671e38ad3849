"""The offline log of the feature store, and the training sets built from it.

Training rows must equal what serving saw, so the online side does not keep
history itself: for every observation it publishes the point-in-time feature
vector (a `TrainingRow`) to `features.offline`, and every late label after it.
This module turns that topic into an append-only Parquet log and reads it back.

`OfflineSink` buffers records per partition and writes one Parquet file per
partition every N records or T seconds, atomically (temporary file, fsync,
rename), named after the topic, partition and offset range it covers. Offsets
are committed only once the files are on disk, so a crash replays records into
a file of the same name: at-least-once delivery never loses a row, and a
duplicate that still gets through is removed when reading.

`OfflineStore` reads the log with DuckDB (no server, one connection per call):
rows and labels deduplicated by event id, each row joined to its label whichever
arrived first, written as a Parquet training set whose bytes are deterministic,
so the sha256 of the file identifies the dataset version in lineage.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, cast

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError
from driftloop.v1 import common_pb2, events_pb2, features_pb2
from driftloop_core.featureset import FeatureSet, FieldType
from driftloop_core.kafka import Outgoing, PoisonMessage, Publisher, Record, Topics, parse_headers
from driftloop_core.kafka.consumer import group_consumer
from driftloop_core.kafka.deadletter import DeadLetterWriter
from driftloop_core.kafka.topics import kind_of_message
from driftloop_core.settings import Settings
from google.protobuf.message import DecodeError
from opentelemetry import trace
from prometheus_client import Counter

log = structlog.get_logger(__name__)
tracer = trace.get_tracer("driftloop.features.offline")

ROW_TYPE = kind_of_message("driftloop.v1.TrainingRow").ce_type
LABEL_TYPE = kind_of_message("driftloop.v1.Label").ce_type
# TrainingRow.label is a plain int64, so whether the observation carried its
# label travels beside it as a header: "1" or "0".
HAS_LABEL_HEADER = "has_label"
DEFAULT_GROUP = "driftloop-features-offline"

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

_TIMESTAMP = pa.timestamp("ms", tz="UTC")
_ARROW_TYPES: dict[FieldType, pa.DataType] = {
    "float": pa.float64(),
    "int": pa.int64(),
    "category": pa.string(),
    "string": pa.string(),
    "bool": pa.bool_(),
}
_SQL_TYPES: dict[FieldType, str] = {
    "float": "DOUBLE",
    "int": "BIGINT",
    "category": "VARCHAR",
    "string": "VARCHAR",
    "bool": "BOOLEAN",
}
# Fixed writer options: together with a fixed row order and one chunk per
# column they make the bytes of a training set a function of its rows alone
# (for a given pyarrow version, which uv.lock pins).
_DATASET_WRITE_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": True,
    "write_statistics": True,
    "version": "2.6",
    "data_page_version": "1.0",
    "row_group_size": 128 * 1024,
}

WRITTEN = Counter(
    "driftloop_features_offline_records_total",
    "Records of features.offline handled by the offline sink, by outcome.",
    ["outcome"],
)
FLUSHES = Counter(
    "driftloop_features_offline_flushes_total",
    "Parquet flushes of the offline sink (each followed by an offset commit).",
)


class InvalidWindowError(ValueError):
    """A `DataWindow` that selects nothing meaningful (last_n < 1, start >= end)."""


class UnknownModelError(LookupError):
    """A training set asked for a model this feature store does not serve."""


# --------------------------------------------------------------------------- schemas


def _check_feature_names(featureset: FeatureSet) -> None:
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
    _check_feature_names(featureset)
    return pa.schema(
        [
            pa.field("event_id", pa.string(), nullable=False),
            pa.field("entity_id", pa.string(), nullable=False),
            pa.field("event_time", _TIMESTAMP, nullable=False),
            *feature_fields(featureset),
            pa.field("has_label", pa.bool_(), nullable=False),
            pa.field("label", pa.int64()),
            pa.field("source_partition", pa.int32(), nullable=False),
            pa.field("source_offset", pa.int64(), nullable=False),
            pa.field("source_timestamp", _TIMESTAMP, nullable=False),
        ]
    )


def labels_schema() -> pa.Schema:
    """Schema of the label files of the log (`offline/<feature set>/labels/*.parquet`)."""
    return pa.schema(
        [
            pa.field("event_id", pa.string(), nullable=False),
            pa.field("entity_id", pa.string(), nullable=False),
            pa.field("label", pa.int64(), nullable=False),
            pa.field("ingested_at", _TIMESTAMP),
            pa.field("event_time", _TIMESTAMP),
            pa.field("feature_set", pa.string(), nullable=False),
            pa.field("source_partition", pa.int32(), nullable=False),
            pa.field("source_offset", pa.int64(), nullable=False),
            pa.field("source_timestamp", _TIMESTAMP, nullable=False),
        ]
    )


def dataset_schema(featureset: FeatureSet) -> pa.Schema:
    """Schema of a training-set file: ids, event time, model features, label."""
    _check_feature_names(featureset)
    return pa.schema(
        [
            pa.field("event_id", pa.string(), nullable=False),
            pa.field("entity_id", pa.string(), nullable=False),
            pa.field("event_time", _TIMESTAMP, nullable=False),
            *feature_fields(featureset),
            pa.field("label", pa.int64(), nullable=False),
        ]
    )


def offline_dir(settings: Settings, featureset: FeatureSet) -> Path:
    """Root of the feature set's log; `rows/` and `labels/` below it."""
    return settings.home / "offline" / featureset.name


def datasets_dir(settings: Settings) -> Path:
    return settings.home / "datasets"


# --------------------------------------------------------------------- the wire side


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


def offline_label(label: events_pb2.Label, *, topic: str = Topics.FEATURES_OFFLINE) -> Outgoing:
    """The record the online side publishes for a late label."""
    return Outgoing(topic, label.SerializeToString(), key=label.entity_id, ce_type=LABEL_TYPE)


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


# ------------------------------------------------------------------------- writing


def write_parquet_atomic(
    table: pa.Table, path: Path, options: Mapping[str, Any] | None = None
) -> None:
    """Write `table` so that `path` holds either nothing or the whole durable file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A dot prefix and a .tmp suffix keep readers' `*.parquet` listings off it.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("wb") as sink:
            pq.write_table(table, sink, **(options or {}))
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _PartitionBuffer:
    """Records of one partition taken since the last flush."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int = -1
    rows: list[dict[str, Any]] = field(default_factory=list)
    labels: list[dict[str, Any]] = field(default_factory=list)
    edges: list[bytes] = field(default_factory=list)

    def take(self, record: Record) -> None:
        self.last_offset = record.offset
        # The file name carries a fingerprint of its first and last records, so
        # a replay of the same offsets writes the same name, while the same
        # offsets of a new topic (a fresh embedded broker starts again at 0)
        # never overwrite an older file.
        edge = hashlib.sha256(b"%d|" % record.timestamp_ms + record.value).digest()
        if not self.edges:
            self.edges.append(edge)
        self.edges[1:] = [edge]

    def file_name(self) -> str:
        fingerprint = hashlib.sha256(b"".join(self.edges)).hexdigest()[:10]
        return (
            f"{self.topic}-{self.partition:04d}-{self.first_offset:020d}-"
            f"{self.last_offset:020d}-{fingerprint}.parquet"
        )


@dataclass(frozen=True)
class SinkProgress:
    """What a sink did since it started; `pending` records are not committed yet."""

    rows_written: int
    labels_written: int
    deadlettered: int
    flushes: int
    pending: int


class _FlushOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sink: OfflineSink) -> None:
        self._sink = sink

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        # Still a member of the old generation: what was taken can be written
        # and committed before another member takes the partitions over.
        await self._sink.flush()

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        log.info("offline_sink_assigned", partitions=sorted(str(tp) for tp in assigned))


class OfflineSink:
    """Appends `features.offline` to the Parquet log; commits after each durable flush.

    `start()`, then `run()` until `request_stop()`; `stop()` leaves the group.
    A record that does not decode is dead-lettered with its source offset and
    never blocks its partition.
    """

    def __init__(
        self,
        settings: Settings,
        featureset: FeatureSet,
        publisher: Publisher,
        *,
        topic: str = Topics.FEATURES_OFFLINE,
        group_id: str = DEFAULT_GROUP,
        deadletter_topic: str = Topics.DEADLETTER,
        flush_records: int = 5000,
        flush_interval_s: float = 1.0,
    ) -> None:
        if flush_records < 1 or flush_interval_s <= 0:
            raise ValueError("flush_records must be >= 1 and flush_interval_s > 0")
        self._settings = settings
        self._kafka = settings.kafka
        self._featureset = featureset
        self._topic = topic
        self._group = group_id
        self._flush_records = flush_records
        self._flush_interval_s = flush_interval_s
        self._rows_schema = rows_schema(featureset)
        self._labels_schema = labels_schema()
        root = offline_dir(settings, featureset)
        self._rows_dir = root / "rows"
        self._labels_dir = root / "labels"
        self._deadletters = DeadLetterWriter(publisher, deadletter_topic, settings.service_name)
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = asyncio.Event()
        # Taking records and flushing them never interleave, also not with the
        # flush a rebalance triggers from the coordinator's task.
        self._lock = asyncio.Lock()
        self._buffers: dict[TopicPartition, _PartitionBuffer] = {}
        self._taken = 0
        self._first_taken_at = 0.0
        self._rows_written = 0
        self._labels_written = 0
        self._deadlettered = 0
        self._flushes = 0

    @property
    def progress(self) -> SinkProgress:
        return SinkProgress(
            rows_written=self._rows_written,
            labels_written=self._labels_written,
            deadlettered=self._deadlettered,
            flushes=self._flushes,
            pending=self._taken,
        )

    async def start(self) -> None:
        self._consumer = group_consumer(
            self._settings, group_id=self._group, client_suffix="offline"
        )
        await self._consumer.start()
        self._consumer.subscribe([self._topic], listener=_FlushOnRevoke(self))
        log.info(
            "offline_sink_started",
            topic=self._topic,
            group=self._group,
            featureset=self._featureset.name,
            flush_records=self._flush_records,
            flush_interval_s=self._flush_interval_s,
        )

    def request_stop(self) -> None:
        """Flush what was taken, commit, and leave the loop."""
        self._stopping.set()

    async def stop(self) -> None:
        self.request_stop()
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def run(self) -> None:
        """Consume until `request_stop()`. Raises if a file or a dead letter cannot
        be written; nothing past the last durable flush is committed then."""
        consumer = self._consumer
        assert consumer is not None, "OfflineSink.start() was not awaited"
        while not self._stopping.is_set():
            batches = await consumer.getmany(
                timeout_ms=self._poll_timeout_ms(),
                max_records=max(1, min(self._kafka.max_poll_records, self._room())),
            )
            async with self._lock:
                for messages in batches.values():
                    for message in messages:
                        await self._take(message)
                if self._due():
                    await self._flush_locked()
        await self.flush()

    async def flush(self) -> None:
        """Write every buffered record to Parquet, then commit their offsets."""
        async with self._lock:
            await self._flush_locked()

    def _room(self) -> int:
        return self._flush_records - self._taken

    def _poll_timeout_ms(self) -> int:
        if not self._taken:
            return 200
        left = self._first_taken_at + self._flush_interval_s - time.monotonic()
        return max(0, min(200, math.ceil(left * 1000)))

    def _due(self) -> bool:
        if not self._taken:
            return False
        elapsed = time.monotonic() - self._first_taken_at
        return self._taken >= self._flush_records or elapsed >= self._flush_interval_s

    async def _take(self, message: Any) -> None:
        record = Record(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=message.key,
            value=message.value if message.value is not None else b"",
            headers=parse_headers(message.headers),
            raw_headers=tuple(message.headers or ()),
            timestamp_ms=message.timestamp,
        )
        tp = TopicPartition(record.topic, record.partition)
        buffer = self._buffers.get(tp)
        if buffer is None:
            buffer = self._buffers[tp] = _PartitionBuffer(
                record.topic, record.partition, first_offset=record.offset
            )
        if not self._taken:
            self._first_taken_at = time.monotonic()
        buffer.take(record)
        self._taken += 1
        try:
            kind, columns = decode_record(record, self._featureset)
        except PoisonMessage as poison:
            log.warning(
                "offline_record_deadlettered",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                reason=poison.reason,
            )
            await self._deadletters.write(record, poison)
            self._deadlettered += 1
            WRITTEN.labels("deadlettered").inc()
            return
        (buffer.rows if kind == "row" else buffer.labels).append(columns)

    async def _flush_locked(self) -> None:
        if not self._buffers:
            return
        buffers = list(self._buffers.values())
        with tracer.start_as_current_span(
            f"flush {self._topic}",
            attributes={
                "messaging.destination.name": self._topic,
                "messaging.batch.message_count": self._taken,
            },
        ):
            await asyncio.to_thread(self._write, buffers)
            rows = sum(len(buffer.rows) for buffer in buffers)
            labels = sum(len(buffer.labels) for buffer in buffers)
            await self._commit(buffers)
        self._buffers.clear()
        self._taken = 0
        self._rows_written += rows
        self._labels_written += labels
        self._flushes += 1
        WRITTEN.labels("row").inc(rows)
        WRITTEN.labels("label").inc(labels)
        FLUSHES.inc()
        log.info(
            "offline_flushed",
            topic=self._topic,
            partitions=len(buffers),
            rows=rows,
            labels=labels,
        )

    def _write(self, buffers: Sequence[_PartitionBuffer]) -> None:
        for buffer in buffers:
            name = buffer.file_name()
            if buffer.rows:
                table = pa.Table.from_pylist(buffer.rows, schema=self._rows_schema)
                write_parquet_atomic(table, self._rows_dir / name)
            if buffer.labels:
                table = pa.Table.from_pylist(buffer.labels, schema=self._labels_schema)
                write_parquet_atomic(table, self._labels_dir / name)

    async def _commit(self, buffers: Sequence[_PartitionBuffer]) -> None:
        consumer = self._consumer
        assert consumer is not None
        assigned = consumer.assignment()
        offsets = {
            TopicPartition(buffer.topic, buffer.partition): buffer.last_offset + 1
            for buffer in buffers
        }
        # A partition lost meanwhile is replayed by its new owner into files of
        # the same names; committing it from here would be refused anyway.
        offsets = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except CommitFailedError as error:
            log.warning("offline_commit_failed", topic=self._topic, error=str(error))


# ------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class TrainingSet:
    """A training set written to Parquet, described for lineage and the trainer."""

    model: str
    path: Path
    sha256: str  # lowercase hex sha256 of the file's bytes
    row_count: int
    first_event_time: datetime | None
    last_event_time: datetime | None
    feature_names: tuple[str, ...]
    requested: common_pb2.DataWindow
    rows: tuple[features_pb2.TrainingRow, ...] | None = None

    def dataset(self) -> common_pb2.Dataset:
        dataset = common_pb2.Dataset(
            uri=str(self.path), sha256=self.sha256, row_count=self.row_count
        )
        dataset.requested.CopyFrom(self.requested)
        if self.first_event_time is not None and self.last_event_time is not None:
            dataset.time_range.start.FromDatetime(self.first_event_time)
            # The proto's range is half-open: end is just after the last row.
            dataset.time_range.end.FromDatetime(self.last_event_time + timedelta(milliseconds=1))
        return dataset


def training_set_response(training_set: TrainingSet) -> features_pb2.GetTrainingSetResponse:
    """The GetTrainingSet reply: the dataset, its feature columns, and rows if asked."""
    return features_pb2.GetTrainingSetResponse(
        dataset=training_set.dataset(),
        feature_names=list(training_set.feature_names),
        rows=list(training_set.rows or ()),
    )


class OfflineStore:
    """Read-only view of one feature set's offline log; safe to call from threads."""

    def __init__(self, settings: Settings, featureset: FeatureSet) -> None:
        _check_feature_names(featureset)
        self._featureset = featureset
        root = offline_dir(settings, featureset)
        self._rows_dir = root / "rows"
        self._labels_dir = root / "labels"
        self._datasets_dir = datasets_dir(settings)
        self._schema = dataset_schema(featureset)

    @property
    def model(self) -> str:
        return self._featureset.name

    def training_set(
        self,
        window: common_pb2.DataWindow | None = None,
        *,
        model: str | None = None,
        include_rows: bool = False,
    ) -> TrainingSet:
        """Write the labelled point-in-time rows of `window` to Parquet and describe them.

        Rows are deduplicated by event id; a row's label is its own when it
        carried one, else the latest late label for its event id. Rows come in
        event-time order (event id breaks ties). An empty window means every
        labelled row. Raises `UnknownModelError` for another model and
        `InvalidWindowError` for a window that cannot select anything.
        """
        if model is not None and model != self.model:
            raise UnknownModelError(f"unknown model {model!r}; this store serves {self.model!r}")
        requested = common_pb2.DataWindow()
        if window is not None:
            requested.CopyFrom(window)
        table = self._select(requested)
        path, digest = self._write_dataset(table)
        times = table.column("event_time")
        first = last = None
        if table.num_rows:
            first = cast(datetime, times[0].as_py())
            last = cast(datetime, times[table.num_rows - 1].as_py())
        log.info(
            "training_set_built",
            model=self.model,
            rows=table.num_rows,
            sha256=digest,
            path=str(path),
            window=requested.WhichOneof("kind") or "all",
        )
        return TrainingSet(
            model=self.model,
            path=path,
            sha256=digest,
            row_count=table.num_rows,
            first_event_time=first,
            last_event_time=last,
            feature_names=self._featureset.model.features,
            requested=requested,
            rows=self._protos(table) if include_rows else None,
        )

    def _select(self, window: common_pb2.DataWindow) -> pa.Table:
        where, params, limit = _window_filter(window)
        row_files = _parquet_files(self._rows_dir)
        if not row_files:
            return self._schema.empty_table()
        label_files = _parquet_files(self._labels_dir)
        with duckdb.connect(":memory:") as connection:
            present = {
                str(column[0])
                for column in connection.execute(
                    "DESCRIBE SELECT * FROM read_parquet(?, union_by_name = true)", [row_files]
                ).fetchall()
            }
            features = []
            for name in self._featureset.model.features:
                sql_type = _SQL_TYPES[self._featureset.feature_type(name)]
                # Files older than a feature (the model grew) read as nulls.
                source = _quote(name) if name in present else "NULL"
                features.append(f"CAST({source} AS {sql_type}) AS {_quote(name)}")
            if label_files:
                labels_source = "FROM read_parquet($labels, union_by_name = true)"
                params["labels"] = label_files
            else:
                labels_source = (
                    "FROM (SELECT NULL::VARCHAR AS event_id, NULL::BIGINT AS label, "
                    "NULL::TIMESTAMPTZ AS ingested_at, NULL::TIMESTAMPTZ AS source_timestamp, "
                    "NULL::BIGINT AS source_offset) WHERE false"
                )
            params["rows"] = row_files
            # Copies of one row are the same point-in-time vector: keep the first
            # written. Labels for one event id may differ (a correction): the
            # latest accepted wins, by ingestion time, then position in the log.
            selected = f"""
                WITH observed AS (
                    SELECT event_id, entity_id, epoch_ms(event_time) AS event_time_ms,
                           {", ".join(features)}, has_label, label AS own_label
                    FROM read_parquet($rows, union_by_name = true)
                    QUALIFY row_number() OVER (
                        PARTITION BY event_id
                        ORDER BY source_timestamp, source_partition, source_offset
                    ) = 1
                ),
                late AS (
                    SELECT event_id, label
                    {labels_source}
                    QUALIFY row_number() OVER (
                        PARTITION BY event_id
                        ORDER BY ingested_at DESC NULLS LAST, source_timestamp DESC,
                                 source_offset DESC, label DESC
                    ) = 1
                ),
                labelled AS (
                    SELECT observed.* EXCLUDE (has_label, own_label),
                           CASE WHEN observed.has_label THEN observed.own_label
                                ELSE late.label END AS label
                    FROM observed LEFT JOIN late ON late.event_id = observed.event_id
                )
                SELECT * FROM labelled WHERE label IS NOT NULL {where}
            """
            if limit is None:
                query = f"{selected} ORDER BY event_time_ms, event_id"
            else:
                params["limit"] = limit
                query = (
                    f"SELECT * FROM ({selected} ORDER BY event_time_ms DESC, event_id DESC "
                    "LIMIT $limit) ORDER BY event_time_ms, event_id"
                )
            relation = connection.sql(query, params=params)
            assert relation is not None
            result: pa.Table = relation.to_arrow_table()
        return self._conform(result)

    def _conform(self, result: pa.Table) -> pa.Table:
        """DuckDB's column types as the dataset schema, one chunk per column."""
        columns = []
        for schema_field in self._schema:
            source = "event_time_ms" if schema_field.name == "event_time" else schema_field.name
            column = result.column(source).combine_chunks()
            if schema_field.name == "event_time":
                column = column.cast(pa.int64()).cast(_TIMESTAMP)
            columns.append(column.cast(schema_field.type))
        return pa.Table.from_arrays(columns, schema=self._schema)

    def _write_dataset(self, table: pa.Table) -> tuple[Path, str]:
        self._datasets_dir.mkdir(parents=True, exist_ok=True)
        staging = self._datasets_dir / f".{self.model}-{uuid.uuid4().hex}.parquet.tmp"
        try:
            write_parquet_atomic(table, staging, _DATASET_WRITE_OPTIONS)
            digest = _sha256_file(staging)
            path = self._datasets_dir / f"{self.model}-{digest[:12]}.parquet"
            # Same name, same bytes: a concurrent or repeated build replaces it harmlessly.
            os.replace(staging, path)
        finally:
            staging.unlink(missing_ok=True)
        _fsync_dir(self._datasets_dir)
        return path.resolve(), digest

    def _protos(self, table: pa.Table) -> tuple[features_pb2.TrainingRow, ...]:
        kinds = {
            name: self._featureset.feature_type(name) for name in self._featureset.model.features
        }
        rows = []
        for item in table.to_pylist():
            row = features_pb2.TrainingRow(
                event_id=item["event_id"], entity_id=item["entity_id"], label=item["label"]
            )
            row.event_time.FromDatetime(item["event_time"])
            for name, feature_type in kinds.items():
                value = item[name]
                if value is not None:
                    row.features[name].CopyFrom(feature_value(feature_type, value))
            rows.append(row)
        return tuple(rows)


def feature_value(feature_type: FieldType, value: Any) -> common_pb2.FeatureValue:
    """A typed value as FeatureValue; bool travels as int 0/1 (FeatureValue has no bool)."""
    if feature_type == "float":
        return common_pb2.FeatureValue(float_value=float(value))
    if feature_type in ("int", "bool"):
        return common_pb2.FeatureValue(int_value=int(value))
    return common_pb2.FeatureValue(string_value=str(value))


def _window_filter(window: common_pb2.DataWindow) -> tuple[str, dict[str, Any], int | None]:
    """SQL condition on `event_time_ms`, its parameters, and the last_n limit."""
    kind = window.WhichOneof("kind")
    if kind == "last_n":
        if window.last_n < 1:
            raise InvalidWindowError(f"last_n must be at least 1, got {window.last_n}")
        return "", {}, window.last_n
    if kind != "time_range":
        return "", {}, None
    span = window.time_range
    conditions = []
    params: dict[str, Any] = {}
    # Event times are kept in whole milliseconds: t >= start_ns / 1e6 holds
    # exactly when t >= ceil(start_ns / 1e6), and likewise for the end.
    if span.HasField("start"):
        params["start_ms"] = -(-span.start.ToNanoseconds() // 1_000_000)
        conditions.append("event_time_ms >= $start_ms")
    if span.HasField("end"):
        params["end_ms"] = -(-span.end.ToNanoseconds() // 1_000_000)
        conditions.append("event_time_ms < $end_ms")
    if (
        span.HasField("start")
        and span.HasField("end")
        and span.start.ToNanoseconds() >= span.end.ToNanoseconds()
    ):
        raise InvalidWindowError("time_range.start must be before time_range.end")
    return "".join(f" AND {condition}" for condition in conditions), params, None


def _parquet_files(directory: Path) -> list[str]:
    if not directory.is_dir():
        return []
    return sorted(str(path) for path in directory.glob("*.parquet"))


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        for chunk in iter(lambda: source.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
