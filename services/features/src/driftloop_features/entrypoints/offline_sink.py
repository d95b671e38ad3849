"""The offline sink: `features.offline` appended to the Parquet log.

A batch handler on the shared `ConsumerLoop` under `FlushThenCommit`: each
fetched batch is decoded into the log's per-partition buffers (records that do
not decode are handed back to be dead-lettered), and the loop flushes every N
records or T seconds, on a rebalance's revoke and at stop, committing offsets
only once the files are durably on disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from driftloop_core.featureset import FeatureSet
from driftloop_core.kafka import (
    ConsumerLoop,
    FlushThenCommit,
    PoisonMessage,
    Publisher,
    Record,
    Topics,
)
from driftloop_core.settings import Settings
from opentelemetry import trace

from driftloop_features.adapters.parquet_log import ParquetLog
from driftloop_features.metrics import FLUSHES, WRITTEN

log = structlog.get_logger(__name__)
tracer = trace.get_tracer("driftloop.features.offline")

DEFAULT_GROUP = "driftloop-features-offline"


@dataclass(frozen=True)
class SinkProgress:
    """What a sink did since it started; `pending` records are not committed yet."""

    rows_written: int
    labels_written: int
    deadlettered: int
    flushes: int
    pending: int


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
        self._topic = topic
        self._featureset = featureset
        self._log = ParquetLog(settings, featureset)
        self._policy = FlushThenCommit(self._flush, flush_records, flush_interval_s)
        self._loop = ConsumerLoop(
            settings,
            topics=[topic],
            group_id=group_id,
            publisher=publisher,
            handle_batch=self._take,
            policy=self._policy,
            deadletter_topic=deadletter_topic,
            client_suffix="offline",
        )
        self._rows_written = 0
        self._labels_written = 0
        self._flushes = 0

    @property
    def progress(self) -> SinkProgress:
        return SinkProgress(
            rows_written=self._rows_written,
            labels_written=self._labels_written,
            deadlettered=self._loop.stats.deadlettered,
            flushes=self._flushes,
            pending=self._log.pending,
        )

    async def start(self) -> None:
        await self._loop.start()
        log.info(
            "offline_sink_started",
            topic=self._topic,
            group=self._loop.group_id,
            featureset=self._featureset.name,
            flush_records=self._policy.records,
            flush_interval_s=self._policy.interval_s,
        )

    async def run(self) -> None:
        """Consume until `request_stop()`. Raises if a file or a dead letter cannot
        be written; nothing past the last durable flush is committed then."""
        await self._loop.run()

    def request_stop(self) -> None:
        """Flush what was taken, commit, and leave the loop."""
        self._loop.request_stop()

    async def stop(self) -> None:
        await self._loop.stop()

    async def flush(self) -> None:
        """Write every buffered record to Parquet, then commit their offsets."""
        await self._loop.flush()

    async def _take(self, records: Sequence[Record]) -> list[PoisonMessage | None]:
        outcomes = [self._log.take(record) for record in records]
        dead = sum(outcome is not None for outcome in outcomes)
        if dead:
            WRITTEN.labels("deadlettered").inc(dead)
        return outcomes

    async def _flush(self) -> None:
        with tracer.start_as_current_span(
            f"flush {self._topic}",
            attributes={
                "messaging.destination.name": self._topic,
                "messaging.batch.message_count": self._log.pending,
            },
        ):
            flushed = await self._log.flush()
        self._rows_written += flushed.rows
        self._labels_written += flushed.labels
        self._flushes += 1
        WRITTEN.labels("row").inc(flushed.rows)
        WRITTEN.labels("label").inc(flushed.labels)
        FLUSHES.inc()
        log.info(
            "offline_flushed",
            topic=self._topic,
            partitions=flushed.partitions,
            rows=flushed.rows,
            labels=flushed.labels,
        )
