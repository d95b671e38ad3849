"""Training sets read from the offline log with DuckDB (no server, one connection per call).

Rows and labels are deduplicated by event id, each row joined to its label
whichever arrived first, and written as a Parquet training set whose bytes are
deterministic, so the sha256 of the file identifies the dataset version in
lineage. The same rows make the same file; after each write the model's
oldest files beyond the newest `datasets_kept` are deleted, so repeated calls
over a growing log leave a bounded number behind.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import duckdb
import pyarrow as pa
import structlog
from driftloop.v1 import common_pb2, features_pb2
from driftloop_core.featureset import FeatureSet, FieldType
from driftloop_core.settings import Settings
from driftloop_core.values import typed_feature_value

from driftloop_features.adapters.parquet_log import fsync_dir, write_parquet_atomic
from driftloop_features.offline import (
    TIMESTAMP,
    DatasetSettings,
    InvalidWindowError,
    UnknownModelError,
    check_feature_names,
    dataset_schema,
    datasets_dir,
    offline_dir,
)

log = structlog.get_logger(__name__)

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


@dataclass(frozen=True)
class TrainingSetFile:
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


class OfflineStore:
    """Read-only view of one feature set's offline log; safe to call from threads."""

    def __init__(
        self, settings: Settings, featureset: FeatureSet, *, datasets_kept: int | None = None
    ) -> None:
        """`datasets_kept`: training-set files kept for this model (default:
        `DRIFTLOOP_FEATURES_DATASETS_KEPT`, see `DatasetSettings`)."""
        check_feature_names(featureset)
        if datasets_kept is None:
            datasets_kept = DatasetSettings().datasets_kept
        if datasets_kept < 1:
            raise ValueError(f"datasets_kept must be at least 1, got {datasets_kept}")
        self._datasets_kept = datasets_kept
        # This model's training-set files, and no other's: names are identifiers.
        self._dataset_name = re.compile(rf"{re.escape(featureset.name)}-[0-9a-f]{{12}}\.parquet")
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
    ) -> TrainingSetFile:
        """Write the labelled point-in-time rows of `window` to Parquet and describe them.

        Rows are deduplicated by event id; a row's label is the latest late
        label for its event id (for a row that carried its own, ingestion
        publishes one only as an explicit correction), else its own. Rows come in
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
        return TrainingSetFile(
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
                           -- a late label for a labelled row is a correction
                           COALESCE(late.label, CASE WHEN observed.has_label
                                                     THEN observed.own_label END) AS label
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
                column = column.cast(pa.int64()).cast(TIMESTAMP)
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
        self._prune(keep=path.name)
        fsync_dir(self._datasets_dir)
        return path.resolve(), digest

    def _prune(self, keep: str) -> None:
        """Delete this model's training sets but the newest `datasets_kept` (by
        modification time; `keep`, just written, always stays)."""
        found: list[tuple[int, str]] = []
        with os.scandir(self._datasets_dir) as entries:
            for entry in entries:
                if not self._dataset_name.fullmatch(entry.name) or entry.name == keep:
                    continue
                try:
                    found.append((entry.stat(follow_symlinks=False).st_mtime_ns, entry.name))
                except FileNotFoundError:
                    continue  # pruned by a concurrent build
        found.sort(reverse=True)
        stale = [name for _, name in found[self._datasets_kept - 1 :]]
        for name in stale:
            (self._datasets_dir / name).unlink(missing_ok=True)
        if stale:
            log.info("training_sets_pruned", model=self.model, deleted=len(stale))

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
                    row.features[name].CopyFrom(typed_feature_value(feature_type, value))
            rows.append(row)
        return tuple(rows)


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
