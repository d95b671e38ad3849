"""Traces, metrics and logs for one Driftloop process.

* :mod:`~driftloop_core.telemetry.setup`: :func:`init_telemetry`, called once from
  each service's ``__main__``, and the Prometheus ``/metrics`` server;
* :mod:`~driftloop_core.telemetry.otlp_file`: the exporter that writes spans as
  OTLP-JSON lines under ``DRIFTLOOP_HOME/traces`` when no collector is configured;
* :mod:`~driftloop_core.telemetry.reader`: those lines read back, for
  ``driftloop traces``.
"""

from driftloop_core.telemetry.otlp_file import (
    OtlpJsonLinesSpanExporter,
    encode_otlp_json,
    traces_file,
)
from driftloop_core.telemetry.reader import SpanRecord, read_spans
from driftloop_core.telemetry.setup import (
    Telemetry,
    init_telemetry,
    serve_metrics,
    start_metrics_server,
)

__all__ = [
    "OtlpJsonLinesSpanExporter",
    "SpanRecord",
    "Telemetry",
    "encode_otlp_json",
    "init_telemetry",
    "read_spans",
    "serve_metrics",
    "start_metrics_server",
    "traces_file",
]
