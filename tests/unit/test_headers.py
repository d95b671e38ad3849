"""CloudEvents headers and W3C trace context survive the trip through Kafka headers."""

from __future__ import annotations

from datetime import UTC, datetime

from driftloop_core.kafka.headers import make_headers, parse_headers
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


def test_cloudevents_attributes_round_trip() -> None:
    moment = datetime(2026, 11, 22, 12, 30, 1, 250_000, tzinfo=UTC)
    sent = make_headers(
        "driftloop.model.registered.v1",
        "/driftloop/registry",
        event_id="e-42",
        time=moment,
        extra={"model": "payments"},
    )
    raw = sent.to_kafka()
    keys = [key for key, _ in raw]
    for required in ("ce_specversion", "ce_id", "ce_type", "ce_source", "ce_time", "content-type"):
        assert required in keys
    assert dict(raw)["ce_time"] == b"2026-11-22T12:30:01.250Z"
    got = parse_headers(raw)
    assert got.id == "e-42"
    assert got.type == "driftloop.model.registered.v1"
    assert got.source == "/driftloop/registry"
    assert got.specversion == "1.0"
    assert got.content_type == "application/protobuf"
    assert got.time == moment
    assert got.extra == {"model": "payments"}


def test_trace_context_round_trip(spans: InMemorySpanExporter) -> None:
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("producer") as span:
        raw = make_headers("t", "/s").to_kafka()
        sent = span.get_span_context()
    received = parse_headers(raw)
    assert received.traceparent is not None
    assert received.traceparent.split("-")[1] == format(sent.trace_id, "032x")
    with tracer.start_as_current_span("consumer", context=received.trace_context()) as child:
        assert child.get_span_context().trace_id == sent.trace_id
    finished = {s.name: s for s in spans.get_finished_spans()}
    consumer_span = finished["consumer"]
    assert consumer_span.parent is not None
    assert consumer_span.parent.span_id == sent.span_id


def test_records_from_plain_producers_parse_to_empty_attributes() -> None:
    got = parse_headers(None)
    assert got.id == "" and got.type == "" and got.traceparent is None
    assert parse_headers([("ce_time", b"garbage")]).time is None
