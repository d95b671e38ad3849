"""The composition root: one place that builds ingestion from its parts.

`build` wires settings, the feature set, the SQLite event index, the Kafka
publisher, the `events.raw` consumer (the core `ConsumerLoop` over the
`RawEvents` batch handler) and the gRPC server into an `IngestionService`;
nothing opens a socket before `start()`. Tests build it with their own settings and a
port-0 address, the load test builds it against its own broker.

Stopping follows the order that keeps every event: health goes NOT_SERVING
first, the consumer finishes and commits its batch, the gRPC server lets
in-flight calls end, and only then are the producer and the index closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sqlite3
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from driftloop.v1 import ingest_pb2_grpc
from driftloop_core.broker import cluster_id
from driftloop_core.featureset import FeatureSet
from driftloop_core.grpc.server import GrpcServer, build_server
from driftloop_core.kafka.loop import ConsumerLoop
from driftloop_core.kafka.policies import CommitAfterBatch
from driftloop_core.kafka.publisher import Publisher
from driftloop_core.logging import get_logger
from driftloop_core.runtime import serve_until_signal
from driftloop_core.settings import Settings

from driftloop_ingestion.adapters.event_index import SqliteEventIndex
from driftloop_ingestion.adapters.sink import KafkaEventSink
from driftloop_ingestion.config import IngestionSettings
from driftloop_ingestion.entrypoints.grpc import SERVICE_NAME, IngestServicer
from driftloop_ingestion.entrypoints.kafka import RawEvents
from driftloop_ingestion.handlers import Ingestor
from driftloop_ingestion.ports import PublishFailed
from driftloop_ingestion.validation import Validator

log = get_logger(__name__)


# Allocations between young-generation collections. Ingestion allocates a few
# short-lived, acyclic objects per event (freed by reference counting), so the
# default of 700 ran a collection every few events and, with older generations
# growing, cost a fifth of the Kafka path's throughput in the load test.
GC_THRESHOLDS = (100_000, 50, 100)


def tune_gc() -> None:
    """Freeze what start-up allocated and collect the young generation rarely.

    Called once by `__main__` (and by the load test, to measure the same
    process); process-wide, so not part of `build()`.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def build_producer(settings: Settings, config: IngestionSettings) -> AIOKafkaProducer:
    """The producer behind the shared `Publisher`, sized for batches of thousands:
    the aiokafka default of 16 KiB per partition batch would split every
    ingested batch into hundreds of produce requests."""
    kafka = settings.kafka
    return AIOKafkaProducer(
        **kafka.client_options(),
        client_id=f"{kafka.client_id_prefix}-{settings.service_name}",
        acks="all",
        enable_idempotence=kafka.enable_idempotence,
        linger_ms=config.producer_linger_ms,
        max_batch_size=config.producer_max_batch_bytes,
        max_request_size=max(config.producer_max_batch_bytes, 1024 * 1024),
    )


def build_consumer(
    settings: Settings,
    config: IngestionSettings,
    ingestor: Ingestor,
    publisher: Publisher,
    *,
    consumer: Any | None = None,
) -> ConsumerLoop:
    """The `events.raw` group member: whole fetched batches of `kafka_batch_size`
    records to `RawEvents`, two in flight, committed in order. `consumer`
    replaces the aiokafka consumer (tests hand a fake)."""
    return ConsumerLoop(
        settings,
        topics=[config.source_topic],
        group_id=config.group_id,
        publisher=publisher,
        handle_batch=RawEvents(ingestor, max_event_bytes=config.max_event_bytes),
        policy=CommitAfterBatch(in_flight=2),
        deadletter_topic=config.deadletter_topic,
        consumer_options={
            "max_poll_records": config.kafka_batch_size,
            "fetch_max_bytes": config.fetch_max_bytes,
            "max_partition_fetch_bytes": config.max_partition_fetch_bytes,
        },
        consumer=consumer,
    )


class IngestionService:
    """Ingestion's running parts, started and stopped together."""

    def __init__(
        self,
        settings: Settings,
        config: IngestionSettings,
        *,
        index: SqliteEventIndex,
        producer: AIOKafkaProducer,
        publisher: Publisher,
        ingestor: Ingestor,
        consumer: ConsumerLoop | None,
        server: GrpcServer,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.config = config
        self.index = index
        self.publisher = publisher
        self.ingestor = ingestor
        self.consumer = consumer
        self.server = server
        self._producer = producer
        self._clock = clock
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False

    @property
    def endpoint(self) -> str:
        """`host:port` of the gRPC server once started."""
        return self.server.endpoint

    async def start(self) -> None:
        await self._use_broker()
        await self._producer.start()
        if self.consumer is not None:
            await self.consumer.start()
        await self.server.start()
        if self.consumer is not None:
            self._tasks.append(asyncio.create_task(self.consumer.run(), name="consume"))
        self._tasks.append(asyncio.create_task(self._prune_periodically(), name="prune"))
        self._tasks.append(asyncio.create_task(self._expire_periodically(), name="expire"))
        log.info(
            "ingestion_started",
            grpc=self.server.endpoint,
            source_topic=self.config.source_topic if self.consumer else None,
            index=str(self.index.path),
            dedup_window_s=self.config.dedup_window.total_seconds(),
            label_horizon_s=self.config.label_horizon.total_seconds(),
            label_wait_s=self.config.label_wait.total_seconds(),
            max_future_s=self.ingestor.validator.max_future.total_seconds(),
            held_labels=self.index.held_count(),
        )

    async def _use_broker(self) -> None:
        """Learn which broker this run publishes to; after the embedded broker
        restarted empty, events the index saw before are published again when
        replayed (see `SqliteEventIndex.use_broker`)."""
        cluster = await cluster_id(self.settings.kafka)
        now_ms = int(self._clock() * 1000)
        since_ms = self.index.use_broker(cluster, now_ms)
        self.ingestor.published_since_ms = since_ms
        if since_ms == now_ms:
            log.warning(
                "broker_replaced",
                cluster_id=cluster,
                indexed_events=self.index.count(),
                meaning="the events indexed so far were published to a broker that is gone: "
                "each is published again when a producer replays it",
            )

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        await self.server.health.enter_graceful_shutdown()
        if self.consumer is not None:
            self.consumer.request_stop()
        consume = next((t for t in self._tasks if t.get_name() == "consume"), None)
        try:
            if consume is not None:
                await consume
        finally:
            for task in self._tasks:
                if task is not consume:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if self.consumer is not None:
                await self.consumer.stop()
            await self.server.stop()
            await self._producer.stop()
            self.index.close()
            log.info("ingestion_stopped")

    async def run_until_signal(self) -> int:
        """Serve until SIGTERM/SIGINT (exit code 0), or until ingestion cannot go
        on (exit code 1, so that the supervisor restarts the process)."""
        return await serve_until_signal(
            "ingestion",
            self.start,
            self.stop,
            lambda: self._tasks,
            # Broker unreachable, gRPC port taken, a batch that could not be
            # published or indexed: it stays uncommitted and is read again.
            (KafkaError, PublishFailed, sqlite3.Error, OSError, RuntimeError),
        )

    async def _expire_periodically(self) -> None:
        """Dead-letter held labels whose wait ran out; a failure to publish them
        ends the service (exit 1) with the labels still held."""
        interval = self.config.label_expiry_interval.total_seconds()
        while True:
            expired = 0
            while (step := await self.ingestor.expire_held()) > 0:
                expired += step
            if expired:
                log.warning(
                    "held_labels_expired",
                    count=expired,
                    label_wait_s=self.config.label_wait.total_seconds(),
                    topic=self.config.deadletter_topic,
                )
            await asyncio.sleep(interval)

    async def _prune_periodically(self) -> None:
        interval = self.config.prune_interval.total_seconds()
        while True:
            deleted = 0
            while (step := self.index.prune()) > 0:
                deleted += step
                await asyncio.sleep(0)
            if deleted:
                log.info("event_index_pruned", deleted=deleted)
            await asyncio.sleep(interval)


def build(
    settings: Settings,
    featureset: FeatureSet,
    config: IngestionSettings | None = None,
    *,
    grpc_address: str | None = None,
    consume: bool = True,
    clock: Callable[[], float] = time.time,
) -> IngestionService:
    """Assemble ingestion; call it inside the event loop that will run it (the
    Kafka clients bind to the running loop). `consume=False` leaves out the
    `events.raw` consumer: a gRPC-only instance, as some tests use."""
    config = config or IngestionSettings()
    index = SqliteEventIndex(config.index_path(settings), retention=config.retention, clock=clock)
    producer = build_producer(settings, config)
    publisher = Publisher(settings, producer=producer)
    ingestor = Ingestor(
        Validator(
            featureset,
            clock=clock,
            max_future=config.max_future,
            max_event_bytes=config.max_event_bytes,
        ),
        index,
        KafkaEventSink(publisher, config.deadletter_topic),
        dedup_window=config.dedup_window,
        label_horizon=config.label_horizon,
        label_wait=config.label_wait,
        max_held_labels=config.max_held_labels,
        clock=clock,
    )
    consumer = build_consumer(settings, config, ingestor, publisher) if consume else None
    servicer = IngestServicer(
        ingestor,
        batch_size=config.stream_batch_size,
        flush_interval_s=config.stream_flush_interval / timedelta(seconds=1),
    )
    server = build_server(
        settings,
        [(ingest_pb2_grpc.add_IngestServiceServicer_to_server, servicer, SERVICE_NAME)],
        grpc_address or settings.endpoints.ingestion,
    )
    return IngestionService(
        settings,
        config,
        index=index,
        producer=producer,
        publisher=publisher,
        ingestor=ingestor,
        consumer=consumer,
        server=server,
        clock=clock,
    )
