"""Publisher and consumer on the real embedded broker: headers, trace context,
dead letters, and resuming from committed offsets."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaConsumer
from driftloop.v1 import events_pb2
from driftloop_core.kafka import (
    ConsumerLoop,
    Outgoing,
    PoisonMessage,
    Publisher,
    Record,
    Topics,
    TopicSpec,
    ensure_topics,
)
from driftloop_core.settings import Settings
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

pytestmark = pytest.mark.integration


async def make_topics(settings: Settings, *names: str, partitions: int = 1) -> None:
    await ensure_topics(settings.kafka, [TopicSpec(name, partitions) for name in names])


async def consume_until(
    consumer: ConsumerLoop, condition: Callable[[], bool], timeout_s: float = 30
) -> None:
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    try:
        async with asyncio.timeout(timeout_s):
            while not condition():
                if task.done():
                    task.result()
                await asyncio.sleep(0.05)
    finally:
        consumer.request_stop()
        await task
        await consumer.stop()


async def read_everything(settings: Settings, topic: str, seconds: float = 3.0) -> list[object]:
    """Whatever the topic holds, read for `seconds` (to show that it holds nothing)."""
    reader = AIOKafkaConsumer(
        topic, bootstrap_servers=settings.kafka.bootstrap_servers, auto_offset_reset="earliest"
    )
    await reader.start()
    got: list[object] = []
    try:
        deadline = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < deadline:
            batch = await reader.getmany(timeout_ms=200)
            for records in batch.values():
                got.extend(records)
    finally:
        await reader.stop()
    return got


async def read_all(settings: Settings, topic: str, count: int) -> list[object]:
    reader = AIOKafkaConsumer(
        topic, bootstrap_servers=settings.kafka.bootstrap_servers, auto_offset_reset="earliest"
    )
    await reader.start()
    got: list[object] = []
    try:
        async with asyncio.timeout(20):
            while len(got) < count:
                batch = await reader.getmany(timeout_ms=200)
                for records in batch.values():
                    got.extend(records)
    finally:
        await reader.stop()
    return got


def collector() -> tuple[list[Record], Callable[[Record], Awaitable[None]]]:
    seen: list[Record] = []

    async def handle(record: Record) -> None:
        seen.append(record)

    return seen, handle


async def test_round_trip_keeps_headers_and_trace_context(
    settings: Settings, unique: str, spans: InMemorySpanExporter
) -> None:
    topic = f"t.roundtrip.{unique}"
    await make_topics(settings, topic)
    seen: list[tuple[Record, int]] = []

    async def handle(record: Record) -> None:
        seen.append((record, trace.get_current_span().get_span_context().trace_id))

    async with Publisher(settings) as publisher:
        with trace.get_tracer("test").start_as_current_span("origin") as origin:
            meta = await publisher.publish(
                topic, b"payload", key="c7", ce_type="driftloop.test.v1", event_id="e1"
            )
        consumer = ConsumerLoop(
            settings, topics=[topic], group_id=f"g.{unique}", handle=handle, publisher=publisher
        )
        await consume_until(consumer, lambda: len(seen) == 1)

    record, consumer_trace_id = seen[0]
    assert (record.topic, record.offset, record.key, record.value) == (
        topic,
        meta.offset,
        b"c7",
        b"payload",
    )
    assert record.headers.id == "e1"
    assert record.headers.type == "driftloop.test.v1"
    assert record.headers.source == "/driftloop/test"
    assert record.headers.content_type == "application/protobuf"
    assert record.headers.time is not None
    origin_trace = origin.get_span_context().trace_id
    assert consumer_trace_id == origin_trace
    finished = spans.get_finished_spans()
    send = next(s for s in finished if s.name == f"send {topic}")
    process = next(s for s in finished if s.name == f"process {topic}")
    assert send.kind == SpanKind.PRODUCER and process.kind == SpanKind.CONSUMER
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert process.attributes is not None
    assert process.attributes["messaging.destination.name"] == topic
    assert [s.name for s in finished].count(f"process {topic}") == 1


async def test_poison_message_is_deadlettered_and_the_next_is_handled(
    spans: InMemorySpanExporter, settings: Settings, unique: str
) -> None:
    topic = f"t.poison.{unique}"
    dlq = f"t.poison.{unique}.deadletter"
    await make_topics(settings, topic, dlq)
    handled: list[bytes] = []

    async def handle(record: Record) -> None:
        if record.value == b"bad":
            raise PoisonMessage("amount: must be >= 0", field="amount", rule="min")
        handled.append(record.value)

    async with Publisher(settings) as publisher:
        for value in (b"good-1", b"bad", b"good-2"):
            await publisher.publish(topic, value, key="k", ce_type="driftloop.test.v1")
        consumer = ConsumerLoop(
            settings,
            topics=[topic],
            group_id=f"g.{unique}",
            handle=handle,
            publisher=publisher,
            deadletter_topic=dlq,
        )
        await consume_until(consumer, lambda: len(handled) == 2)

    assert handled == [b"good-1", b"good-2"]
    [letter_record] = await read_all(settings, dlq, 1)
    letter = events_pb2.DeadLetter.FromString(letter_record.value)  # type: ignore[attr-defined]
    assert letter.reason == "amount: must be >= 0"
    assert (letter.field, letter.rule) == ("amount", "min")
    assert letter.payload == b"bad"
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (topic, 0, 1)
    assert letter.key == b"k"
    assert letter.service == "test"
    assert {h.key for h in letter.headers} >= {"ce_id", "ce_type", "traceparent"}


async def test_handler_crash_is_deadlettered_not_blocking(settings: Settings, unique: str) -> None:
    topic = f"t.crash.{unique}"
    await make_topics(settings, topic)
    handled: list[bytes] = []

    async def handle(record: Record) -> None:
        if record.value == b"boom":
            raise KeyError("missing")
        handled.append(record.value)

    async with Publisher(settings) as publisher:
        for value in (b"boom", b"after"):
            await publisher.publish(topic, value, key="k", ce_type="driftloop.test.v1")
        consumer = ConsumerLoop(
            settings, topics=[topic], group_id=f"g.{unique}", handle=handle, publisher=publisher
        )
        await consume_until(consumer, lambda: handled == [b"after"])
    letters = [
        events_pb2.DeadLetter.FromString(r.value)  # type: ignore[attr-defined]
        for r in await read_all(settings, Topics.DEADLETTER, 1)
    ]
    mine = [letter for letter in letters if letter.source_topic == topic]
    assert mine and mine[0].rule == "handler_error" and "KeyError" in mine[0].reason


async def test_restarted_consumer_resumes_from_committed_offsets(
    settings: Settings, unique: str
) -> None:
    topic = f"t.resume.{unique}"
    group = f"g.{unique}"
    await make_topics(settings, topic, partitions=2)
    total = 40
    async with Publisher(settings) as publisher:
        for i in range(total):
            await publisher.publish(
                topic, str(i).encode(), key=f"entity-{i % 5}", ce_type="driftloop.test.v1"
            )
        first: list[Record] = []

        async def handle_first(record: Record) -> None:
            first.append(record)
            if len(first) == 15:
                consumer.request_stop()  # stop mid-stream, mid-batch

        consumer = ConsumerLoop(
            settings, topics=[topic], group_id=group, handle=handle_first, publisher=publisher
        )
        await consume_until(consumer, lambda: len(first) >= 15)
        assert len(first) == 15

        second, handle_second = collector()
        consumer = ConsumerLoop(
            settings, topics=[topic], group_id=group, handle=handle_second, publisher=publisher
        )
        await consume_until(consumer, lambda: len(first) + len(second) >= total)

    first_values = [int(r.value) for r in first]
    second_values = [int(r.value) for r in second]
    # Nothing lost, nothing handled twice after a clean stop.
    assert sorted(first_values + second_values) == list(range(total))
    assert first_values and second_values
    # The second member picked up exactly where the first committed.
    for partition in {r.partition for r in second}:
        resumed_at = min(r.offset for r in second if r.partition == partition)
        handled_before = [r.offset for r in first if r.partition == partition]
        assert resumed_at == (max(handled_before) + 1 if handled_before else 0)


async def test_batch_publish_is_acknowledged_in_order_per_partition(
    settings: Settings, unique: str
) -> None:
    topic = f"t.batch.{unique}"
    await make_topics(settings, topic, partitions=2)
    async with Publisher(settings) as publisher:
        metas = await publisher.publish_batch(
            [
                Outgoing(topic, str(i).encode(), f"entity-{i % 3}", "driftloop.test.v1", f"e{i}")
                for i in range(300)
            ]
        )
    assert len(metas) == 300
    records = await read_all(settings, topic, 300)
    by_entity: dict[bytes, list[int]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):  # type: ignore[attr-defined]
        by_entity.setdefault(record.key, []).append(int(record.value))  # type: ignore[attr-defined]
    assert sorted(v for values in by_entity.values() for v in values) == list(range(300))
    for values in by_entity.values():
        assert values == sorted(values), "per-key order must be kept"
    ids = {dict(r.headers)["ce_id"] for r in records}  # type: ignore[attr-defined]
    assert ids == {f"e{i}".encode() for i in range(300)}


async def test_transient_errors_are_retried_never_deadlettered(
    settings: Settings, unique: str
) -> None:
    """A database that blinks (sqlite's OperationalError) three times in a row:
    the record is handled once it answers, and nothing is dead-lettered."""
    topic = f"t.transient.{unique}"
    dlq = f"t.transient.{unique}.deadletter"
    await make_topics(settings, topic, dlq)
    attempts: list[bytes] = []
    handled: list[bytes] = []

    async def handle(record: Record) -> None:
        attempts.append(record.value)
        if record.value == b"blink" and attempts.count(b"blink") <= 3:
            raise sqlite3.OperationalError("database is locked")
        handled.append(record.value)

    async with Publisher(settings) as publisher:
        for value in (b"blink", b"next"):
            await publisher.publish(topic, value, key="k", ce_type="driftloop.test.v1")
        consumer = ConsumerLoop(
            settings,
            topics=[topic],
            group_id=f"g.{unique}",
            handle=handle,
            publisher=publisher,
            deadletter_topic=dlq,
        )
        await consume_until(consumer, lambda: handled == [b"blink", b"next"])
        assert consumer.stats.deadlettered == 0
    assert attempts == [b"blink"] * 4 + [b"next"]
    assert await read_everything(settings, dlq) == []


async def test_stop_during_an_outage_leaves_the_record_uncommitted(
    settings: Settings, unique: str
) -> None:
    """Stopping while the record's dependency is still down commits nothing for
    it: the next member of the group handles it, and it is never dead-lettered."""
    topic = f"t.outage.{unique}"
    dlq = f"t.outage.{unique}.deadletter"
    group = f"g.{unique}"
    await make_topics(settings, topic, dlq)
    tried = asyncio.Event()

    async def down(record: Record) -> None:
        tried.set()
        raise ConnectionRefusedError("registry database: connection refused")

    async with Publisher(settings) as publisher:
        await publisher.publish(topic, b"wanted", key="k", ce_type="driftloop.test.v1")
        first = ConsumerLoop(
            settings,
            topics=[topic],
            group_id=group,
            handle=down,
            publisher=publisher,
            deadletter_topic=dlq,
        )
        await consume_until(first, tried.is_set)

        handled, handle = collector()
        second = ConsumerLoop(
            settings,
            topics=[topic],
            group_id=group,
            handle=handle,
            publisher=publisher,
            deadletter_topic=dlq,
        )
        await consume_until(second, lambda: len(handled) == 1)
    assert [record.value for record in handled] == [b"wanted"]
    assert await read_everything(settings, dlq) == []
