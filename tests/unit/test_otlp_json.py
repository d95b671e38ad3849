"""The traces file's encoder writes what OpenTelemetry's OTLP encoder and
protobuf's JSON printer would: the same document, built straight from the spans."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from driftloop_core.telemetry.otlp_file import OtlpJsonLinesSpanExporter, encode_otlp_json
from google.protobuf import json_format
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.span import TraceFlags, TraceState

_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId"})


def by_protobuf(spans: list[ReadableSpan]) -> dict[str, Any]:
    """The reference: OpenTelemetry's protobuf encoder, protobuf's JSON printer,
    ids turned from base64 to hex as OTLP/JSON writes them."""

    def hexed(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                key: base64.b64decode(value).hex() if key in _ID_KEYS else hexed(value)
                for key, value in node.items()
            }
        if isinstance(node, list):
            return [hexed(item) for item in node]
        return node

    document = json_format.MessageToDict(encode_spans(spans), use_integers_for_enums=True)
    return hexed(document)  # type: ignore[no-any-return]


def recorded_spans() -> list[ReadableSpan]:
    """Spans with every kind of content a service writes, from two resources and
    two scopes."""
    spans: list[ReadableSpan] = []
    remote = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0x00F067AA0BA902B7,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("vendor", "value")]),
    )
    linked = SpanContext(trace_id=7, span_id=9, is_remote=False)
    for service in ("features", "inference"):
        finished = InMemorySpanExporter()
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(SimpleSpanProcessor(finished))
        for scope in ("driftloop", "grpc"):
            tracer = provider.get_tracer(scope, "1.2.3" if scope == "grpc" else None)
            with tracer.start_as_current_span(
                "parent",
                kind=SpanKind.SERVER,
                context=trace.set_span_in_context(NonRecordingSpan(remote)),
            ) as parent:
                parent.set_attributes(
                    {
                        "text": "a",
                        "empty": "",
                        "flag": False,
                        "count": 0,
                        "big": 2**62,
                        "ratio": 0.25,
                        "nan": float("nan"),
                        "inf": float("inf"),
                        "names": ["x", "y"],
                        "numbers": [1, 2],
                        "none": [],
                    }
                )
                parent.add_event("retry", {"attempt": 2})
                parent.add_event("bare")
                with tracer.start_as_current_span(
                    "child",
                    kind=SpanKind.PRODUCER,
                    links=[Link(linked, {"why": "batch"}), Link(remote)],
                ) as child:
                    child.set_status(Status(StatusCode.ERROR, "broker down"))
                with tracer.start_as_current_span("ok", kind=SpanKind.CLIENT) as ok:
                    ok.set_status(Status(StatusCode.OK))
        spans.extend(finished.get_finished_spans())
        provider.shutdown()
    with TracerProvider().get_tracer("root").start_as_current_span("root"):
        pass  # a span without a processor: not recorded
    return spans


def test_the_direct_encoding_is_the_protobuf_encoding() -> None:
    spans = recorded_spans()
    assert len(spans) == 12

    assert encode_otlp_json(spans) == by_protobuf(spans)


def test_one_span_at_a_time_too() -> None:
    for span in recorded_spans():
        assert encode_otlp_json([span]) == by_protobuf([span])


def test_nothing_to_encode() -> None:
    assert encode_otlp_json([]) == by_protobuf([])


def test_the_exporter_writes_one_json_line_per_batch(tmp_path: Path) -> None:
    spans = recorded_spans()
    path = tmp_path / "traces" / "inference.jsonl"
    exporter = OtlpJsonLinesSpanExporter(path)

    exporter.export(spans[:5])
    exporter.export(spans[5:])

    lines = path.read_text().splitlines()
    assert len(lines) == 2
    # NaN and infinities are strings in OTLP/JSON, so every line is strict JSON.
    documents = [json.loads(line, parse_constant=lambda name: 1 / 0) for line in lines]
    assert documents == [by_protobuf(spans[:5]), by_protobuf(spans[5:])]
