"""The offline log on disk: Parquet files appended per partition, written atomically.

Records of `features.offline` are buffered per partition and written as one
file per partition on each flush (temporary file, fsync, rename), named after
the topic, partition and offset range it covers: a replay after a crash writes
files of the same names, so at-least-once delivery never loses a row, and a
duplicate that still gets through is removed when reading.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from aiokafka import TopicPartition
from driftloop_core.featureset import FeatureSet
from driftloop_core.kafka import PoisonMessage, Record
from driftloop_core.settings import Settings

from driftloop_features.offline import decode_record, labels_schema, offline_dir, rows_schema


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
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class PartitionBuffer:
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
class Flushed:
    """What one flush wrote."""

    partitions: int
    rows: int
    labels: int


class ParquetLog:
    """One feature set's log under `offline/<feature set>/{rows,labels}/`: records
    are taken into per-partition buffers and written by `flush()`."""

    def __init__(self, settings: Settings, featureset: FeatureSet) -> None:
        self._featureset = featureset
        self._rows_schema = rows_schema(featureset)
        self._labels_schema = labels_schema()
        root = offline_dir(settings, featureset)
        self._rows_dir = root / "rows"
        self._labels_dir = root / "labels"
        self._buffers: dict[TopicPartition, PartitionBuffer] = {}
        self.pending = 0

    def take(self, record: Record) -> PoisonMessage | None:
        """Buffer one record; a record that does not decode still counts for the
        offset range of its partition's file, and is returned to dead-letter."""
        tp = TopicPartition(record.topic, record.partition)
        buffer = self._buffers.get(tp)
        if buffer is None:
            buffer = self._buffers[tp] = PartitionBuffer(
                record.topic, record.partition, first_offset=record.offset
            )
        buffer.take(record)
        self.pending += 1
        try:
            kind, columns = decode_record(record, self._featureset)
        except PoisonMessage as poison:
            return poison
        (buffer.rows if kind == "row" else buffer.labels).append(columns)
        return None

    async def flush(self) -> Flushed:
        """Write every buffer durably, then forget them. On an error nothing is
        forgotten: the next flush writes the same files again."""
        buffers = list(self._buffers.values())
        if buffers:
            await asyncio.to_thread(self._write, buffers)
        self._buffers.clear()
        self.pending = 0
        return Flushed(
            partitions=len(buffers),
            rows=sum(len(buffer.rows) for buffer in buffers),
            labels=sum(len(buffer.labels) for buffer in buffers),
        )

    def _write(self, buffers: Sequence[PartitionBuffer]) -> None:
        for buffer in buffers:
            name = buffer.file_name()
            if buffer.rows:
                table = pa.Table.from_pylist(buffer.rows, schema=self._rows_schema)
                write_parquet_atomic(table, self._rows_dir / name)
            if buffer.labels:
                table = pa.Table.from_pylist(buffer.labels, schema=self._labels_schema)
                write_parquet_atomic(table, self._labels_dir / name)
