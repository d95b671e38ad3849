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
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from driftloop_core.logging import get_logger

__all__ = ["OtlpJsonLinesSpanExporter", "encode_otlp_json", "traces_file"]

_log = get_logger(__name__)

_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId"})


def traces_file(traces_dir: Path, service_name: str) -> Path:
    """The OTLP-JSON lines file a service writes its spans to."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", service_name) or "unknown"
    return traces_dir / f"{safe}.jsonl"


def _hex_ids(node: Any) -> Any:
    """OTLP/JSON writes trace and span ids as hex, where protobuf JSON uses base64."""
    if isinstance(node, dict):
        return {
            key: base64.b64decode(value).hex()
            if key in _ID_KEYS and isinstance(value, str)
            else _hex_ids(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_hex_ids(item) for item in node]
    return node


def encode_otlp_json(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """One ``ExportTraceServiceRequest`` in the OTLP/JSON encoding (camelCase keys,
    integer enums, hex ids)."""
    request = encode_spans(spans)
    document = json_format.MessageToDict(request, use_integers_for_enums=True)
    hexed: dict[str, Any] = _hex_ids(document)
    return hexed


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
