"""The one CONSUMER span of Driftloop's consumers (OpenTelemetry messaging conventions).

A single record's span is the child of the producer's span its headers carry,
so one trace runs from an event to what it caused. A batch's span links to the
traces its first records carry instead (most raw producers send none).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind

from driftloop_core.kafka.record import Record

tracer = trace.get_tracer("driftloop.kafka")

# Links per batch span; beyond this a trace backend shows them as noise.
MAX_LINKS = 32


def _base_attributes(topic: str, group: str) -> dict[str, str | int]:
    return {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": topic,
        "messaging.consumer.group.name": group,
    }


@contextmanager
def record_span(record: Record, group: str) -> Iterator[Span]:
    """`process <topic>` for one record, parented on its producer's span."""
    attributes = _base_attributes(record.topic, group)
    attributes.update(
        {
            "messaging.destination.partition.id": str(record.partition),
            "messaging.kafka.offset": record.offset,
            "messaging.message.id": record.headers.id,
            "messaging.kafka.message.key": record.key_str,
        }
    )
    with tracer.start_as_current_span(
        f"process {record.topic}",
        context=record.headers.trace_context(),
        kind=SpanKind.CONSUMER,
        attributes=attributes,
    ) as span:
        yield span


@contextmanager
def batch_span(records: Sequence[Record], group: str) -> Iterator[Span]:
    """`process <topic>` for a batch (topics joined by commas), linked to the
    producers' spans of its first records."""
    topics = sorted({record.topic for record in records})
    topic = ",".join(topics)
    attributes = _base_attributes(topic, group)
    attributes["messaging.batch.message_count"] = len(records)
    partitions = {record.partition for record in records}
    if len(topics) == 1 and len(partitions) == 1:
        attributes["messaging.destination.partition.id"] = str(partitions.pop())
    with tracer.start_as_current_span(
        f"process {topic}", kind=SpanKind.CONSUMER, links=links(records), attributes=attributes
    ) as span:
        yield span


def links(records: Sequence[Record]) -> list[Link]:
    """Links to the spans of producers that sent trace context."""
    found: list[Link] = []
    for record in records:
        if not record.headers.traceparent:
            continue
        context = trace.get_current_span(record.headers.trace_context()).get_span_context()
        if context.is_valid:
            found.append(Link(context))
            if len(found) >= MAX_LINKS:
                break
    return found
