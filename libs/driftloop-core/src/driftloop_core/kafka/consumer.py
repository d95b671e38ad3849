"""Consuming Driftloop topics with at-least-once delivery and no stuck partition.

The loop fetches a batch, hands each record to the service's handler inside a
CONSUMER span parented on the producer's trace context, and commits the batch's
offsets only after every record in it was handled or dead-lettered. A handler
signals bad data with `PoisonMessage` (dead-lettered at once) and a passing
outage with `TransientError` (retried with backoff, dead-lettered when retries
run out). If the dead-letter write itself fails, nothing is committed and the
error propagates: a record is never skipped without a trace.

A commit the group refuses (it rebalanced without this member, or the embedded
broker restarted empty and knows no group) is logged and skipped, and the loop
goes on: aiokafka rejoins, whoever owns the partitions then reads those records
again, and every handler is idempotent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import Counter, Gauge

from driftloop_core.kafka.deadletter import DeadLetterWriter
from driftloop_core.kafka.headers import EventHeaders, parse_headers
from driftloop_core.kafka.publisher import Publisher, backoff_delays, is_transient
from driftloop_core.kafka.topics import Topics
from driftloop_core.settings import Settings

log = structlog.get_logger(__name__)
tracer = trace.get_tracer("driftloop.kafka")

CONSUMED = Counter(
    "driftloop_kafka_consumed_records_total",
    "Records handled by a consumer, by outcome (ok, deadlettered).",
    ["group", "topic", "outcome"],
)
LAG = Gauge(
    "driftloop_kafka_consumer_lag_records",
    "Records between the consumer position and the partition high watermark.",
    ["group", "topic", "partition"],
)


def group_consumer(
    settings: Settings, *topics: str, group_id: str, client_suffix: str = "", **overrides: Any
) -> AIOKafkaConsumer:
    """An aiokafka group member with Driftloop's delivery settings: manual commits
    after the work is done, from the earliest offset, with the failover timeouts
    of settings. `overrides` tune fetch sizes and batch lengths."""
    kafka = settings.kafka
    suffix = f"-{client_suffix}" if client_suffix else ""
    options: dict[str, Any] = {
        **kafka.client_options(),
        "group_id": group_id,
        "client_id": f"{kafka.client_id_prefix}-{settings.service_name}{suffix}",
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": kafka.session_timeout_ms,
        "heartbeat_interval_ms": kafka.heartbeat_interval_ms,
        "rebalance_timeout_ms": kafka.rebalance_timeout_ms,
        "max_poll_records": kafka.max_poll_records,
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


class PoisonMessage(Exception):
    """A record that can never be handled; it goes to the dead-letter topic."""

    def __init__(self, reason: str, *, field: str = "", rule: str = "", event_id: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field
        self.rule = rule
        self.event_id = event_id


class TransientError(Exception):
    """A passing failure (a dependency is down); the record is retried."""


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: EventHeaders
    raw_headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int

    @property
    def key_str(self) -> str:
        return self.key.decode(errors="replace") if self.key is not None else ""


Handler = Callable[[Record], Awaitable[None]]


class Consumer:
    """A consumer group member running one handler over a set of topics."""

    def __init__(
        self,
        settings: Settings,
        *,
        topics: Iterable[str],
        group_id: str,
        handler: Handler,
        publisher: Publisher,
        deadletter_topic: str = Topics.DEADLETTER,
        consumer: Any | None = None,
    ) -> None:
        self._settings = settings
        self._kafka = settings.kafka
        self._topics = tuple(topics)
        self._group = group_id
        self._handler = handler
        self._deadletters = DeadLetterWriter(publisher, deadletter_topic, settings.service_name)
        self._consumer = consumer
        self._stopping = asyncio.Event()
        self._started = False

    async def start(self) -> None:
        if self._consumer is None:
            self._consumer = group_consumer(self._settings, *self._topics, group_id=self._group)
        await self._consumer.start()
        self._started = True

    def request_stop(self) -> None:
        """Finish the record in hand, commit, and leave the loop."""
        self._stopping.set()

    async def stop(self) -> None:
        self.request_stop()
        if self._consumer is not None and self._started:
            self._started = False
            await self._consumer.stop()

    async def run(self) -> None:
        """Consume until `request_stop()`; raises if a record can be neither
        handled nor dead-lettered (offsets stay uncommitted)."""
        assert self._consumer is not None, "Consumer.start() was not awaited"
        while not self._stopping.is_set():
            batches = await self._consumer.getmany(
                timeout_ms=200, max_records=self._kafka.max_poll_records
            )
            done: dict[TopicPartition, int] = {}
            for tp, messages in batches.items():
                for message in messages:
                    await self._process(message)
                    done[tp] = message.offset + 1
                    if self._stopping.is_set():
                        break
                if self._stopping.is_set():
                    break
            if done:
                await self._commit(done)

    async def _commit(self, done: dict[TopicPartition, int]) -> None:
        assert self._consumer is not None
        try:
            await self._consumer.commit(done)
        except (CommitFailedError, IllegalStateError) as error:
            log.warning(
                "commit_refused",
                group=self._group,
                partitions=sorted(str(tp) for tp in done),
                error=type(error).__name__,
                meaning="the group moved on without this member: its records are read again",
            )
            return
        self._record_lag(done)

    async def _process(self, message: Any) -> None:
        headers = parse_headers(message.headers)
        record = Record(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=message.key,
            value=message.value if message.value is not None else b"",
            headers=headers,
            raw_headers=tuple(message.headers or ()),
            timestamp_ms=message.timestamp,
        )
        with tracer.start_as_current_span(
            f"process {record.topic}",
            context=headers.trace_context(),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": record.topic,
                "messaging.consumer.group.name": self._group,
                "messaging.destination.partition.id": str(record.partition),
                "messaging.kafka.offset": record.offset,
                "messaging.message.id": headers.id,
                "messaging.kafka.message.key": record.key_str,
            },
        ) as span:
            reason = await self._handle_with_retry(record)
            if reason is None:
                CONSUMED.labels(self._group, record.topic, "ok").inc()
                return
            span.set_status(Status(StatusCode.ERROR, reason.reason))
            await self._deadletters.write(record, reason)
            CONSUMED.labels(self._group, record.topic, "deadlettered").inc()

    async def _handle_with_retry(self, record: Record) -> PoisonMessage | None:
        """Run the handler; return why the record must be dead-lettered, or None."""
        delays = backoff_delays(self._kafka)
        for attempt in range(len(delays) + 1):
            try:
                await self._handler(record)
                return None
            except PoisonMessage as poison:
                return poison
            except (TransientError, ConnectionError, TimeoutError) as error:
                if attempt == len(delays) or self._stopping.is_set():
                    return PoisonMessage(
                        f"gave up after {attempt + 1} attempts: {error}", rule="retries_exhausted"
                    )
                log.warning(
                    "handler_retry",
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    attempt=attempt + 1,
                    error=str(error),
                )
                await asyncio.sleep(delays[attempt])
            # A handler bug must not block the partition forever: the record is
            # dead-lettered with the error, and the traceback is logged once.
            except Exception as error:
                if is_transient(error) and attempt < len(delays):
                    await asyncio.sleep(delays[attempt])
                    continue
                log.exception(
                    "handler_failed",
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                )
                return PoisonMessage(
                    f"handler raised {type(error).__name__}: {error}", rule="handler_error"
                )
        raise AssertionError("unreachable")

    def _record_lag(self, done: dict[TopicPartition, int]) -> None:
        assert self._consumer is not None
        for tp, position in done.items():
            highwater = self._consumer.highwater(tp)
            if highwater is not None:
                LAG.labels(self._group, tp.topic, str(tp.partition)).set(
                    max(highwater - position, 0)
                )
