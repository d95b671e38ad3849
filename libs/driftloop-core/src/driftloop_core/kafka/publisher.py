"""Publishing Driftloop events: CloudEvents headers, trace context, retries.

Every record leaves inside a PRODUCER span named `send <topic>` (OpenTelemetry
messaging conventions) whose context is what the record's `traceparent` carries,
so the consumer's span hangs under it. Transient broker errors are retried with
exponential backoff; idempotence stays off unless settings turn it on, because
the embedded broker refuses `InitProducerId`.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2
from google.protobuf.message import Message
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from driftloop_core.kafka.headers import PROTOBUF, EventHeaders, make_headers, new_event_id
from driftloop_core.kafka.retry import is_transient, retrying
from driftloop_core.kafka.topics import kind_of_message
from driftloop_core.settings import Settings

log = structlog.get_logger(__name__)
tracer = trace.get_tracer("driftloop.kafka")


class RecordMetadata(Protocol):
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Outgoing:
    """One record of a batch handed to `Publisher.publish_batch`."""

    topic: str
    value: bytes
    key: str | bytes | None
    ce_type: str
    event_id: str | None = None
    content_type: str = PROTOBUF
    extra_headers: Mapping[str, str] | None = None

    @classmethod
    def event(
        cls, message: Message, *, key: str | bytes | None, event_id: str | None = None
    ) -> Outgoing:
        """A Driftloop event bound for the topic its type belongs to."""
        kind = kind_of_message(message.DESCRIPTOR.full_name)
        return cls(kind.topic, message.SerializeToString(), key, kind.ce_type, event_id)


# (topic, key, value, Kafka headers) of a record ready for a record batch.
_Prepared = tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]


@functools.lru_cache(maxsize=1 << 16)
def partition_index(key: bytes, count: int) -> int:
    """The partition a key goes to, as the Java client and aiokafka's default
    partitioner choose it (murmur2), so keyed records land where they would
    with `send()`; cached because entity keys repeat."""
    index: int = (murmur2(key) & 0x7FFFFFFF) % count
    return index


def _key_bytes(key: str | bytes | None) -> bytes | None:
    if key is None or isinstance(key, bytes):
        return key
    return key.encode()


class Publisher:
    """One aiokafka producer per process, shared by everything that publishes."""

    def __init__(self, settings: Settings, *, producer: Any | None = None) -> None:
        self._settings = settings
        self._kafka = settings.kafka
        self._source = f"/driftloop/{settings.service_name}"
        self._producer = producer
        self._owns_producer = producer is None

    async def start(self) -> None:
        if self._producer is None:
            self._producer = AIOKafkaProducer(
                **self._kafka.client_options(),
                client_id=f"{self._kafka.client_id_prefix}-{self._settings.service_name}",
                acks="all",
                enable_idempotence=self._kafka.enable_idempotence,
                linger_ms=5,
            )
        if self._owns_producer:
            await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None and self._owns_producer:
            await self._producer.stop()

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def publish_event(
        self,
        message: Message,
        *,
        key: str | bytes | None,
        event_id: str | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> RecordMetadata:
        """Publish a Driftloop event to the topic its type belongs to."""
        kind = kind_of_message(message.DESCRIPTOR.full_name)
        return await self.publish(
            kind.topic,
            message.SerializeToString(),
            key=key,
            ce_type=kind.ce_type,
            event_id=event_id,
            extra_headers=extra_headers,
        )

    async def publish(
        self,
        topic: str,
        value: bytes,
        *,
        key: str | bytes | None,
        ce_type: str,
        event_id: str | None = None,
        content_type: str = PROTOBUF,
        extra_headers: Mapping[str, str] | None = None,
    ) -> RecordMetadata:
        """Send one record and wait for the broker's acknowledgement."""
        if self._producer is None:
            raise RuntimeError("Publisher.start() was not awaited")
        key_bytes = _key_bytes(key)
        with tracer.start_as_current_span(f"send {topic}", kind=SpanKind.PRODUCER) as span:
            headers: EventHeaders = make_headers(
                ce_type,
                self._source,
                event_id=event_id,
                content_type=content_type,
                extra=extra_headers,
            )
            span.set_attributes(
                {
                    "messaging.system": "kafka",
                    "messaging.operation.type": "send",
                    "messaging.operation.name": "send",
                    "messaging.destination.name": topic,
                    "messaging.message.id": headers.id,
                    "cloudevents.event_type": ce_type,
                }
            )
            if key_bytes is not None:
                span.set_attribute(
                    "messaging.kafka.message.key", key_bytes.decode(errors="replace")
                )
            metadata = await self._send_with_retry(topic, value, key_bytes, headers)
            span.set_attribute("messaging.destination.partition.id", str(metadata.partition))
            span.set_attribute("messaging.kafka.offset", metadata.offset)
            return metadata

    async def publish_batch(
        self, records: Sequence[Outgoing], *, trace_batch: bool = False
    ) -> list[RecordMetadata]:
        """Send many records at once and wait until the broker acknowledged all.

        Records are pipelined through the producer's buffer instead of waiting
        for each acknowledgement, which is what makes high-rate ingestion
        possible; order is kept per partition. Records whose send failed with a
        transient error are sent again (only those), with backoff.

        By default each record gets its own PRODUCER span. With `trace_batch`
        the whole batch is sent inside one PRODUCER span, which every record's
        `traceparent` names, the records share one `ce_time`, and they are
        appended straight into one record batch per partition: for high-rate
        publishers (ingestion), where a span and a `send()` per record cost
        more than the record itself and overflow the span export queue.
        """
        if self._producer is None:
            raise RuntimeError("Publisher.start() was not awaited")
        if trace_batch:
            return await self._publish_as_one(records)
        spans = []
        pending: dict[int, tuple[Outgoing, EventHeaders]] = {}
        for index, record in enumerate(records):
            span = tracer.start_span(
                f"send {record.topic}",
                kind=SpanKind.PRODUCER,
                attributes={
                    "messaging.system": "kafka",
                    "messaging.operation.type": "send",
                    "messaging.operation.name": "send",
                    "messaging.destination.name": record.topic,
                    "messaging.batch.message_count": len(records),
                },
            )
            headers = make_headers(
                record.ce_type,
                self._source,
                event_id=record.event_id,
                content_type=record.content_type,
                context=trace.set_span_in_context(span),
                extra=record.extra_headers,
            )
            span.set_attribute("messaging.message.id", headers.id)
            spans.append(span)
            pending[index] = (record, headers)
        results: dict[int, RecordMetadata] = {}
        try:
            async for attempt in retrying(self._kafka, "publish_batch"):
                with attempt:
                    await self._send_pending(pending, results)
        finally:
            for span in spans:
                span.end()
        return [results[index] for index in range(len(records))]

    async def _send_pending(
        self,
        pending: dict[int, tuple[Outgoing, EventHeaders]],
        results: dict[int, RecordMetadata],
    ) -> None:
        """Send what is pending; what was acknowledged leaves `pending`. Raises
        the first failure if anything is left (transient ones are retried)."""
        assert self._producer is not None
        futures = {
            index: await self._producer.send(
                record.topic, record.value, key=_key_bytes(record.key), headers=headers.to_kafka()
            )
            for index, (record, headers) in pending.items()
        }
        outcomes = await asyncio.gather(*futures.values(), return_exceptions=True)
        failed: list[BaseException] = []
        for index, outcome in zip(futures, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failed.append(outcome)
            else:
                results[index] = outcome
                del pending[index]
        if failed:
            raise next((f for f in failed if not is_transient(f)), failed[0])

    async def _publish_as_one(self, records: Sequence[Outgoing]) -> list[RecordMetadata]:
        """`publish_batch(trace_batch=True)`: one span and one set of shared headers."""
        topics = sorted({record.topic for record in records})
        span = tracer.start_span(
            f"send {topics[0] if len(topics) == 1 else 'batch'}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "send",
                "messaging.operation.name": "send",
                "messaging.destination.name": ",".join(topics),
                "messaging.batch.message_count": len(records),
            },
        )
        try:
            shared = make_headers("", self._source, context=trace.set_span_in_context(span))
            common = [
                (key, value)
                for key, value in shared.to_kafka()
                if key not in ("ce_id", "ce_type", "content-type")
            ]
            tails: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
            prepared: list[_Prepared] = []
            for record in records:
                tail = tails.get((record.ce_type, record.content_type))
                if tail is None:
                    tail = tails[(record.ce_type, record.content_type)] = [
                        ("ce_type", record.ce_type.encode()),
                        ("content-type", record.content_type.encode()),
                        *common,
                    ]
                headers = [("ce_id", (record.event_id or new_event_id()).encode()), *tail]
                if record.extra_headers:
                    headers.extend(
                        (key, value.encode()) for key, value in record.extra_headers.items()
                    )
                prepared.append((record.topic, _key_bytes(record.key), record.value, headers))
            return await self._send_batched(prepared)
        finally:
            span.end()

    async def _send_batched(self, prepared: Sequence[_Prepared]) -> list[RecordMetadata]:
        """Append records to one record batch per partition (more when one fills)
        and wait for all; batches that failed transiently are sent again."""
        results: list[RecordMetadata | None] = [None] * len(prepared)
        pending = list(range(len(prepared)))
        async for attempt in retrying(self._kafka, "publish_batch"):
            with attempt:
                pending = await self._send_batches_once(prepared, pending, results)
        return [metadata for metadata in results if metadata is not None]

    async def _send_batches_once(
        self,
        prepared: Sequence[_Prepared],
        pending: list[int],
        results: list[RecordMetadata | None],
    ) -> list[int]:
        """One attempt at the records still pending; returns those left to send
        again, or raises the first failure when some are left."""
        producer = self._producer
        assert producer is not None
        partitions: dict[str, list[int]] = {}
        by_partition: dict[tuple[str, int], list[int]] = {}
        for index in pending:
            topic, key = prepared[index][0], prepared[index][1]
            choices = partitions.get(topic)
            if choices is None:
                choices = partitions[topic] = sorted(await producer.partitions_for(topic))
            partition = (
                choices[partition_index(key, len(choices))]
                if key is not None
                else random.choice(choices)
            )
            by_partition.setdefault((topic, partition), []).append(index)
        sent: list[tuple[list[int], asyncio.Future[Any]]] = []
        for (topic, partition), indices in by_partition.items():
            builder = producer.create_batch()
            members: list[int] = []
            for index in indices:
                _, key, value, headers = prepared[index]
                if builder.append(timestamp=None, key=key, value=value, headers=headers) is None:
                    # Full: send it and start another (a first record always fits).
                    sent.append(
                        (members, await producer.send_batch(builder, topic, partition=partition))
                    )
                    builder, members = producer.create_batch(), []
                    builder.append(timestamp=None, key=key, value=value, headers=headers)
                members.append(index)
            sent.append((members, await producer.send_batch(builder, topic, partition=partition)))
        outcomes = await asyncio.gather(*(future for _, future in sent), return_exceptions=True)
        failed: list[BaseException] = []
        left: list[int] = []
        for (members, _), outcome in zip(sent, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failed.append(outcome)
                left.extend(members)
                continue
            for position, index in enumerate(members):
                results[index] = outcome._replace(offset=outcome.offset + position)
        if failed:
            # The records left are retried in their original order.
            pending[:] = sorted(left)
            raise next((f for f in failed if not is_transient(f)), failed[0])
        return []

    async def _send_with_retry(
        self, topic: str, value: bytes, key: bytes | None, headers: EventHeaders
    ) -> RecordMetadata:
        assert self._producer is not None
        async for attempt in retrying(self._kafka, f"publish to {topic}"):
            with attempt:
                metadata: RecordMetadata = await self._producer.send_and_wait(
                    topic, value, key=key, headers=headers.to_kafka()
                )
                return metadata
        raise AssertionError("unreachable")  # tenacity returns or raises above
