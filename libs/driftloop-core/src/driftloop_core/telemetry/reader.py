"""The local span store read back, for ``driftloop traces``.

Reads the OTLP-JSON lines that :class:`~driftloop_core.telemetry.otlp_file.
OtlpJsonLinesSpanExporter` writes (or a collector's file exporter) and flattens
each span into a :class:`SpanRecord`. It needs no OpenTelemetry SDK: the CLI reads
traces without setting up telemetry of its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

__all__ = ["SpanRecord", "read_spans"]

_SPAN_KINDS = {
    0: "UNSPECIFIED",
    1: "INTERNAL",
    2: "SERVER",
    3: "CLIENT",
    4: "PRODUCER",
    5: "CONSUMER",
}
_STATUS_CODES = {0: "UNSET", 1: "OK", 2: "ERROR"}


class SpanRecord(TypedDict):
    """One span from the local store, flattened for display."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    service: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    kind: str  # INTERNAL, SERVER, CLIENT, PRODUCER, CONSUMER
    status: str  # UNSET, OK, ERROR
    status_message: str
    links: list[dict[str, str]]  # [{"trace_id", "span_id"}]


def _any_value(value: Mapping[str, Any]) -> Any:
    if "stringValue" in value:
        return value["stringValue"]
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "arrayValue" in value:
        return [_any_value(item) for item in value["arrayValue"].get("values", [])]
    if "kvlistValue" in value:
        return _attributes(value["kvlistValue"].get("values", []))
    if "bytesValue" in value:
        return value["bytesValue"]
    return None


def _attributes(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {item["key"]: _any_value(item.get("value", {})) for item in items}


def _enum_name(value: Any, names: Mapping[int, str], prefix: str) -> str:
    if isinstance(value, str):  # a producer that wrote enum names instead of numbers
        return value.removeprefix(prefix)
    return names.get(int(value or 0), str(value))


def _records(document: Mapping[str, Any]) -> Iterator[SpanRecord]:
    for resource_spans in document.get("resourceSpans", []):
        resource = _attributes(resource_spans.get("resource", {}).get("attributes", []))
        service = str(resource.get("service.name", "unknown"))
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                status = span.get("status", {})
                yield SpanRecord(
                    trace_id=span["traceId"],
                    span_id=span["spanId"],
                    parent_id=span.get("parentSpanId") or None,
                    name=span.get("name", ""),
                    service=service,
                    start_ns=int(span.get("startTimeUnixNano", 0)),
                    end_ns=int(span.get("endTimeUnixNano", 0)),
                    attributes=_attributes(span.get("attributes", [])),
                    kind=_enum_name(span.get("kind", 0), _SPAN_KINDS, "SPAN_KIND_"),
                    status=_enum_name(status.get("code", 0), _STATUS_CODES, "STATUS_CODE_"),
                    status_message=status.get("message", ""),
                    links=[
                        {"trace_id": link["traceId"], "span_id": link["spanId"]}
                        for link in span.get("links", [])
                    ],
                )


def read_spans(traces_dir: Path | str) -> list[SpanRecord]:
    """Every span in the ``*.jsonl`` files of ``traces_dir``, oldest first.

    A line that is not complete JSON (a writer killed mid-line) is skipped.
    """
    directory = Path(traces_dir)
    if not directory.is_dir():
        return []
    records: list[SpanRecord] = []
    for path in sorted(directory.glob("*.jsonl")):
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                if not line.strip():
                    continue
                try:
                    document = json.loads(line)
                except json.JSONDecodeError:
                    continue
                records.extend(_records(document))
    records.sort(key=lambda record: (record["start_ns"], record["span_id"]))
    return records
