"""`events.raw` in: JSON lines from any producer, handled a fetched batch at a time.

The core `Consumer` calls its handler once per record, which caps ingestion far
below its target rate; this loop hands the ingestor whole fetched batches
instead and keeps the core consumer's guarantees:

* offsets are committed only after the batch's valid events were published and
  indexed and its invalid records were dead-lettered, so a crash replays a
  batch (deduplicated by event id) and never skips one;
* each invalid record goes to the dead-letter topic with the reason, field and
  rule, its raw payload and its source topic/partition/offset (the core
  `build_deadletter`), so no bad record blocks its partition; a payload over the
  size limit is kept cut to the limit, so its dead letter fits a produce request;
* if the dead-letter or valid-event write fails, nothing is committed and the
  error ends the loop: the process exits and is restarted to try again.

Records need no headers (`kcat` and `kafka-console-producer` write none). A
record without an `event_id` gets one derived from its topic, partition,
offset and timestamp, so replaying it yields the same id while a fresh
in-memory broker reusing offsets does not. Tracing is one CONSUMER span per
batch, linked to the producers' spans when records carry `traceparent`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError
from driftloop_core.kafka.consumer import CONSUMED, LAG, PoisonMessage, Record, group_consumer
from driftloop_core.kafka.deadletter import build_deadletter
from driftloop_core.kafka.headers import parse_headers
from driftloop_core.kafka.publisher import Outgoing, Publisher
from driftloop_core.kafka.topics import kind_of_message
from driftloop_core.logging import get_logger
from driftloop_core.settings import Settings
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind

from driftloop_ingestion.config import IngestionSettings
from driftloop_ingestion.handlers import Incoming, Ingestor
from driftloop_ingestion.rules import RULE_SIZE, Rejection

log = get_logger(__name__)
tracer = trace.get_tracer("driftloop.ingestion")

# Links per batch span; beyond this a trace backend shows them as noise.
MAX_LINKS = 32
_DEADLETTER_TYPE = kind_of_message("driftloop.v1.DeadLetter").ce_type


@dataclass
class ConsumerStats:
    """What the loop has done, for logs and the load test (perf_counter seconds)."""

    batches: int = 0
    records: int = 0
    deadlettered: int = 0
    first_fetched_at: float | None = None
    last_committed_at: float | None = None


class RawEventsConsumer:
    """The ingestion member of the `events.raw` consumer group."""

    def __init__(
        self,
        settings: Settings,
        config: IngestionSettings,
        ingestor: Ingestor,
        publisher: Publisher,
        *,
        consumer: Any | None = None,
    ) -> None:
        self._settings = settings
        self._config = config
        self._ingestor = ingestor
        self._publisher = publisher
        self._consumer = consumer
        self._stopping = asyncio.Event()
        self._started = False
        self.stats = ConsumerStats()
        self._progress = asyncio.Condition()

    async def start(self) -> None:
        if self._consumer is None:
            self._consumer = group_consumer(
                self._settings,
                self._config.source_topic,
                group_id=self._config.group_id,
                max_poll_records=self._config.kafka_batch_size,
                fetch_max_bytes=self._config.fetch_max_bytes,
                max_partition_fetch_bytes=self._config.max_partition_fetch_bytes,
            )
        await self._consumer.start()
        self._started = True

    def request_stop(self) -> None:
        """Finish the batch in hand, commit it, and leave the loop."""
        self._stopping.set()

    async def stop(self) -> None:
        self.request_stop()
        if self._consumer is not None and self._started:
            self._started = False
            await self._consumer.stop()

    async def wait_committed(self, records: int) -> None:
        """Return once at least `records` records were handled and committed."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.stats.records >= records)

    async def run(self) -> None:
        """Consume until `request_stop()`, then finish and commit the batches in hand.

        Two batches are in flight at most: the next one is validated and sent
        while the broker acknowledges the one before, and commits stay in order.
        """
        assert self._consumer is not None, "RawEventsConsumer.start() was not awaited"
        previous: asyncio.Task[None] | None = None
        while not self._stopping.is_set():
            if previous is not None and previous.done():
                previous.result()  # a failed batch ends the loop, uncommitted
            fetched = await self._consumer.getmany(
                timeout_ms=200, max_records=self._config.kafka_batch_size
            )
            if not fetched:
                continue
            current = asyncio.create_task(self.handle(fetched, after=previous))
            if previous is not None:
                try:
                    await previous
                except BaseException:
                    # The batch after a failed one must not commit past it.
                    current.cancel()
                    await asyncio.wait([current])
                    if not current.cancelled():
                        current.exception()  # the same failure, seen through `after`
                    raise
            previous = current
        if previous is not None:
            await previous

    async def handle(
        self, fetched: dict[TopicPartition, list[Any]], *, after: asyncio.Task[None] | None = None
    ) -> None:
        """Ingest one fetched batch, dead-letter its bad records, commit its offsets.

        `after` is the batch fetched before this one: its commit must come first.
        """
        assert self._consumer is not None
        if self.stats.first_fetched_at is None:
            self.stats.first_fetched_at = time.perf_counter()
        messages = [message for records in fetched.values() for message in records]
        topic = self._config.source_topic
        with tracer.start_as_current_span(
            f"process {topic}",
            kind=SpanKind.CONSUMER,
            links=_links(messages),
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": topic,
                "messaging.consumer.group.name": self._config.group_id,
                "messaging.batch.message_count": len(messages),
            },
        ):
            outcomes = await self._ingestor.ingest(
                [
                    Incoming(
                        message.value if message.value is not None else b"",
                        (message.topic, message.partition, message.offset, message.timestamp),
                    )
                    for message in messages
                ],
                source="kafka",
            )
            rejected = [
                (message, outcome)
                for message, outcome in zip(messages, outcomes, strict=True)
                if isinstance(outcome, Rejection)
            ]
            if rejected:
                await self._deadletter(rejected)
            if after is not None:
                await after
            await self._commit(
                {tp: records[-1].offset + 1 for tp, records in fetched.items() if records}
            )
        stats = self.stats
        stats.batches += 1
        stats.records += len(messages)
        stats.deadlettered += len(rejected)
        stats.last_committed_at = time.perf_counter()
        async with self._progress:
            self._progress.notify_all()
        CONSUMED.labels(self._config.group_id, topic, "ok").inc(len(messages) - len(rejected))
        if rejected:
            CONSUMED.labels(self._config.group_id, topic, "deadlettered").inc(len(rejected))

    async def _deadletter(self, rejected: Sequence[tuple[Any, Rejection]]) -> None:
        service = self._settings.service_name
        letters: list[Outgoing] = []
        limit = self._config.max_event_bytes
        for message, rejection in rejected:
            value = message.value if message.value is not None else b""
            if rejection.rule == RULE_SIZE:
                value = value[:limit]
            record = Record(
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                key=message.key,
                value=value,
                headers=parse_headers(message.headers),
                raw_headers=tuple(message.headers or ()),
                timestamp_ms=message.timestamp,
            )
            failure = PoisonMessage(
                rejection.reason,
                field=rejection.field,
                rule=rejection.rule,
                event_id=rejection.event_id,
            )
            letter = build_deadletter(record, failure, service, rejection.event_id)
            letters.append(
                Outgoing(
                    self._config.deadletter_topic,
                    letter.SerializeToString(),
                    record.key,
                    _DEADLETTER_TYPE,
                    extra_headers={
                        "dl_reason": rejection.reason[:200],
                        "dl_source": f"{record.topic}/{record.partition}/{record.offset}",
                    },
                )
            )
        await self._publisher.publish_batch(letters, trace_batch=True)
        first = rejected[0][1]
        log.info(
            "events_deadlettered",
            count=len(letters),
            topic=self._config.deadletter_topic,
            first_field=first.field,
            first_rule=first.rule,
        )

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit what this member still owns.

        When the group rebalanced while the batch was in flight, its events are
        published and indexed already: the partition's new owner reads them
        again and finds them duplicates, so nothing is lost by not committing.
        """
        assert self._consumer is not None
        owned = self._consumer.assignment()
        lost = [tp for tp in offsets if tp not in owned]
        if lost:
            log.warning("commit_skipped_after_rebalance", partitions=[str(tp) for tp in lost])
            offsets = {tp: position for tp, position in offsets.items() if tp in owned}
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as error:
            log.warning("commit_failed_after_rebalance", error=str(error))
            return
        for tp, position in offsets.items():
            highwater = self._consumer.highwater(tp)
            if highwater is not None:
                LAG.labels(self._config.group_id, tp.topic, str(tp.partition)).set(
                    max(highwater - position, 0)
                )


def _links(messages: Sequence[Any]) -> list[Link]:
    """Links to the spans of producers that sent trace context (most send none)."""
    links: list[Link] = []
    for message in messages:
        if not message.headers:
            continue
        context = trace.get_current_span(parse_headers(message.headers).trace_context())
        span_context = context.get_span_context()
        if span_context.is_valid:
            links.append(Link(span_context))
            if len(links) >= MAX_LINKS:
                break
    return links
