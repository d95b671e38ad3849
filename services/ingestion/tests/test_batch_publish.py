"""`Publisher.publish_batch(trace_batch=True)`, the core path ingestion publishes
through: one span per batch, records where `send()` would put them, in order."""

from __future__ import annotations

from typing import Any

import pytest
from driftloop_core.kafka import Outgoing, Publisher, TopicSpec, ensure_topics
from driftloop_core.settings import Settings
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

pytestmark = pytest.mark.integration


async def test_batch_lands_like_single_sends_under_one_span(
    settings: Settings, unique: str, kafka_io: Any, spans: InMemorySpanExporter
) -> None:
    topic = f"t.batch.{unique}"
    await ensure_topics(settings.kafka, [TopicSpec(topic, 4)])
    # 1,500 records of ~1 KiB overflow the producer's 16 KiB record batches many
    # times over, so each partition gets several batches.
    records = [
        Outgoing(topic, f"{i:04d}".encode() * 256, f"entity-{i % 11}", "driftloop.test.v1", f"e{i}")
        for i in range(1500)
    ]
    async with Publisher(settings) as publisher:
        metas = await publisher.publish_batch(records, trace_batch=True)
        singles = {
            f"entity-{k}": await publisher.publish(
                topic, b"single", key=f"entity-{k}", ce_type="driftloop.test.v1"
            )
            for k in range(11)
        }

    stored = await kafka_io.read_topic(topic, lambda r: True, at_least=1500 + 11)
    by_id = {dict(r.headers)["ce_id"].decode(): r for r in stored}
    for i, meta in enumerate(metas):
        record = by_id[f"e{i}"]
        assert (meta.topic, meta.partition, meta.offset) == (topic, record.partition, record.offset)
        # The same key goes to the same partition as a plain send() sends it.
        assert record.partition == singles[f"entity-{i % 11}"].partition
        assert record.key == f"entity-{i % 11}".encode()
    for k in range(11):
        offsets = [by_id[f"e{i}"].offset for i in range(k, 1500, 11)]
        assert offsets == sorted(offsets), "per-key order must be kept"

    batch_spans = [
        s
        for s in spans.get_finished_spans()
        if s.name == f"send {topic}"
        and s.attributes
        and s.attributes.get("messaging.batch.message_count") == 1500
    ]
    assert len(batch_spans) == 1 and batch_spans[0].kind == SpanKind.PRODUCER
    parents = {
        tuple(dict(by_id[f"e{i}"].headers)["traceparent"].decode().split("-")[1:3])
        for i in range(1500)
    }
    span_context = batch_spans[0].context
    assert parents == {(f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}")}
    headers = dict(by_id["e0"].headers)
    assert headers["ce_type"] == b"driftloop.test.v1"
    assert headers["ce_source"] == b"/driftloop/test"
    assert headers["content-type"] == b"application/protobuf"
    assert headers["ce_specversion"] == b"1.0" and headers["ce_time"]
