"""Spans as OTLP-JSON lines in a file, so traces work with no collector running.

Without ``OTEL_EXPORTER_OTLP_ENDPOINT`` a service writes its spans under
``DRIFTLOOP_HOME/traces/<service>.jsonl``: one ``ExportTraceServiceRequest`` in the
OTLP/JSON encoding per exported batch, which is what a collector's file exporter
writes too. :mod:`driftloop_core.telemetry.reader` reads the lines back for
``driftloop traces``.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Link, SpanContext

from driftloop_core.logging import get_logger

__all__ = ["OtlpJsonLinesSpanExporter", "encode_otlp_json", "traces_file"]

_log = get_logger(__name__)

# SpanKind (SDK, from 0) to the OTLP enum (from 1: 0 is UNSPECIFIED).
_KIND_OFFSET = 1
# SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK and SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK.
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200


def traces_file(traces_dir: Path, service_name: str) -> Path:
    """The OTLP-JSON lines file a service writes its spans to."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", service_name) or "unknown"
    return traces_dir / f"{safe}.jsonl"


def encode_otlp_json(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """One ``ExportTraceServiceRequest`` in the OTLP/JSON encoding (camelCase keys,
    integer enums, hex ids, 64-bit integers as strings, default values left out).

    Written straight from the SDK's spans: the same document as OpenTelemetry's
    protobuf encoder followed by protobuf's JSON printer (a test holds them
    equal), at a fraction of the cost. Under load the protobuf route was 10-15%
    of a service's CPU (py-spy, `loadtests/README.md`)."""
    # Grouped by resource, then scope. A service's spans share one resource and
    # a few scope objects, whose own hashes serialise their attributes to JSON:
    # look them up by identity, then group equal ones as the SDK's encoder does.
    by_identity: dict[tuple[int, int], list[dict[str, Any]]] = {}
    objects: dict[tuple[int, int], tuple[Any, Any]] = {}
    for span in spans:
        key = (id(span.resource), id(span.instrumentation_scope))
        encoded = by_identity.get(key)
        if encoded is None:
            encoded = by_identity[key] = []
            objects[key] = (span.resource, span.instrumentation_scope or None)
        encoded.append(_span(span))
    grouped: dict[Any, dict[Any, list[dict[str, Any]]]] = {}
    for key, encoded in by_identity.items():
        resource, scope = objects[key]
        grouped.setdefault(resource, {}).setdefault(scope, []).extend(encoded)
    resource_spans = []
    for resource, scopes in grouped.items():
        scope_spans = []
        for scope, encoded in scopes.items():
            scope_doc: dict[str, Any] = {}
            if scope is not None:
                _put(scope_doc, "name", scope.name)
                _put(scope_doc, "version", scope.version)
                _put(scope_doc, "attributes", _attributes(scope.attributes))
            entry: dict[str, Any] = {"scope": scope_doc, "spans": encoded}
            _put(entry, "schemaUrl", scope.schema_url if scope is not None else None)
            scope_spans.append(entry)
        resource_doc: dict[str, Any] = {}
        _put(resource_doc, "attributes", _attributes(resource.attributes))
        out: dict[str, Any] = {"resource": resource_doc, "scopeSpans": scope_spans}
        _put(out, "schemaUrl", resource.schema_url)
        resource_spans.append(out)
    return {"resourceSpans": resource_spans} if resource_spans else {}


def _put(doc: dict[str, Any], key: str, value: Any) -> None:
    """Set `key` unless `value` is a default (None, 0, "" or empty), as proto3 JSON does."""
    if value:
        doc[key] = value


def _flags(context: SpanContext | None) -> int:
    return _HAS_IS_REMOTE | (_IS_REMOTE if context is not None and context.is_remote else 0)


def _span(span: ReadableSpan) -> dict[str, Any]:
    context = span.get_span_context()
    assert context is not None
    doc: dict[str, Any] = {
        "traceId": f"{context.trace_id:032x}",
        "spanId": f"{context.span_id:016x}",
    }
    if context.trace_state is not None:
        _put(doc, "traceState", ",".join(f"{k}={v}" for k, v in context.trace_state.items()))
    if span.parent is not None:
        doc["parentSpanId"] = f"{span.parent.span_id:016x}"
    doc["flags"] = _flags(span.parent)
    _put(doc, "name", span.name)
    doc["kind"] = span.kind.value + _KIND_OFFSET
    _put(doc, "startTimeUnixNano", str(span.start_time) if span.start_time else None)
    _put(doc, "endTimeUnixNano", str(span.end_time) if span.end_time else None)
    _put(doc, "attributes", _attributes(span.attributes))
    _put(doc, "droppedAttributesCount", span.dropped_attributes)
    _put(doc, "events", [_event(event) for event in span.events])
    _put(doc, "droppedEventsCount", span.dropped_events)
    _put(doc, "links", [_link(link) for link in span.links])
    _put(doc, "droppedLinksCount", span.dropped_links)
    if span.status is not None:
        status: dict[str, Any] = {}
        _put(status, "code", span.status.status_code.value)
        _put(status, "message", span.status.description)
        doc["status"] = status
    return doc


def _event(event: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    _put(doc, "timeUnixNano", str(event.timestamp) if event.timestamp else None)
    _put(doc, "name", event.name)
    _put(doc, "attributes", _attributes(event.attributes))
    _put(doc, "droppedAttributesCount", event.dropped_attributes)
    return doc


def _link(link: Link) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "traceId": f"{link.context.trace_id:032x}",
        "spanId": f"{link.context.span_id:016x}",
    }
    _put(doc, "attributes", _attributes(link.attributes))
    _put(doc, "droppedAttributesCount", link.dropped_attributes)
    doc["flags"] = _flags(link.context)
    return doc


def _attributes(attributes: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    if not attributes:
        return []
    out = []
    for key, value in attributes.items():
        try:
            encoded = _value(value)
        except TypeError as error:
            _log.warning("span_attribute_not_encoded", key=key, error=str(error))
            continue
        out.append(_pair(key, encoded))
    return out


def _pair(key: str, encoded: dict[str, Any]) -> dict[str, Any]:
    """A KeyValue; an empty key is a default, left out like every default."""
    return {"key": key, "value": encoded} if key else {"value": encoded}


def _value(value: Any) -> dict[str, Any]:
    """An AnyValue: its one set field (present even when it holds a default)."""
    if value is None:
        return {}
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        if math.isfinite(value):
            return {"doubleValue": value}
        return {
            "doubleValue": "NaN"
            if math.isnan(value)
            else ("Infinity" if value > 0 else "-Infinity")
        }
    if isinstance(value, bytes):
        return {"bytesValue": base64.b64encode(value).decode("ascii")}
    if isinstance(value, Sequence):
        values = [_value(item) for item in value]
        return {"arrayValue": {"values": values} if values else {}}
    if isinstance(value, Mapping):
        pairs = [_pair(str(k), _value(v)) for k, v in value.items()]
        return {"kvlistValue": {"values": pairs} if pairs else {}}
    raise TypeError(f"invalid type {type(value).__name__} of value {value!r}")


class OtlpJsonLinesSpanExporter(SpanExporter):
    """Append each exported batch as one OTLP-JSON line to a file.

    Each line is written with a single ``write`` on an ``O_APPEND`` descriptor, so a
    reader in another process sees whole lines as soon as a batch is exported, and
    two processes that happen to share a file do not interleave within a line.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._closed = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._closed:
            return SpanExportResult.FAILURE
        if not spans:
            return SpanExportResult.SUCCESS
        line = json.dumps(encode_otlp_json(spans), separators=(",", ":")) + "\n"
        data = line.encode("utf-8")
        try:
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    view = memoryview(data)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                finally:
                    os.close(fd)
        except OSError as error:
            _log.warning("trace_export_failed", path=str(self.path), error=str(error))
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._closed = True

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        # Every export is written through; there is nothing buffered here.
        return True
