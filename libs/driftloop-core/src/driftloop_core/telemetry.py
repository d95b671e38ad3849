"""Traces, metrics and logs for one Driftloop process, set up by one call.

Every service calls :func:`init_telemetry` from ``__main__`` before it builds
anything else. It names the process in an OpenTelemetry resource, installs W3C
trace-context and baggage propagation (so a trace follows an event over Kafka
headers and gRPC metadata), configures JSON logs stamped with the active trace,
and picks where spans go:

* ``OTEL_EXPORTER_OTLP_ENDPOINT`` set: OTLP over gRPC to a collector (production);
* otherwise OTLP-JSON lines under ``DRIFTLOOP_HOME/traces/<service>.jsonl``, one
  ``ExportTraceServiceRequest`` per exported batch, which :func:`read_spans` (and
  so ``driftloop traces``) reads back without any collector running.

Metrics that SREs scrape live in ``prometheus_client`` (``driftloop_`` prefix) and
are served by :func:`start_metrics_server`; the OpenTelemetry meter is exported
only when a collector is configured.

OpenTelemetry allows one global tracer provider per process, but tests initialise
telemetry many times. The global slot therefore holds a forwarding provider, and
each :class:`Telemetry` owns its own SDK providers: the most recent one receives
the spans of every tracer, including tracers that libraries took at import time.
A span processor added to the global provider (a test harness's in-memory
exporter) sees every Telemetry's spans.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

import prometheus_client
from google.protobuf import json_format
from opentelemetry import metrics, propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import (
    DEPLOYMENT_ENVIRONMENT,
    SERVICE_NAME,
    SERVICE_VERSION,
    Resource,
)
from opentelemetry.sdk.trace import (
    ReadableSpan,
    Span,
    SpanProcessor,
    SynchronousMultiSpanProcessor,
)
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from driftloop_core.logging import configure_logging, get_logger
from driftloop_core.settings import Settings

__all__ = [
    "OtlpJsonLinesSpanExporter",
    "SpanRecord",
    "Telemetry",
    "init_telemetry",
    "read_spans",
    "serve_metrics",
    "start_metrics_server",
    "traces_file",
]

_log = get_logger(__name__)

# Spans reach the local store within a second, so `driftloop traces` right after
# a request shows it; the SDK default of five seconds feels like a lost span.
_LOCAL_EXPORT_DELAY_MS = 1000

_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId"})
_SPAN_KINDS = {
    0: "UNSPECIFIED",
    1: "INTERNAL",
    2: "SERVER",
    3: "CLIENT",
    4: "PRODUCER",
    5: "CONSUMER",
}
_STATUS_CODES = {0: "UNSET", 1: "OK", 2: "ERROR"}


# --------------------------------------------------------------------------- export


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


# --------------------------------------------------------------------------- read back


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


# --------------------------------------------------------------------------- providers


class _ForwardingTracer(trace.Tracer):
    """A tracer that looks up the current :class:`Telemetry` at every span start."""

    def __init__(self, owner: _ForwardingTracerProvider, scope: tuple[Any, ...]) -> None:
        self._owner = owner
        self._scope = scope
        self._cached: tuple[SdkTracerProvider | None, trace.Tracer] | None = None

    def _tracer(self) -> trace.Tracer:
        target = self._owner.target
        cached = self._cached
        if cached is None or cached[0] is not target:
            if target is None:
                tracer: trace.Tracer = self._owner.fallback_tracer(self._scope)
            else:
                tracer = target.get_tracer(*self._scope)
            cached = (target, tracer)
            self._cached = cached
        return cached[1]

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        return self._tracer().start_span(*args, **kwargs)

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        return self._tracer().start_as_current_span(*args, **kwargs)


class _Lent(SpanProcessor):
    """A processor lent to a Telemetry, which must not close it when it shuts down."""

    def __init__(self, inner: SpanProcessor) -> None:
        self.inner = inner

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.inner.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        self.inner.on_end(span)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)


class _ForwardingTracerProvider(SdkTracerProvider):
    """The process-global provider; forwards to the latest :class:`Telemetry`.

    It is an SDK provider so that code written for one works: a span processor
    added here (a test harness's in-memory exporter) sees the spans of every
    Telemetry, present and future.
    """

    def __init__(self) -> None:
        super().__init__(shutdown_on_exit=False)
        self.target: SdkTracerProvider | None = None
        self._lent: list[SpanProcessor] = []

    def retarget(self, provider: SdkTracerProvider | None) -> None:
        self.target = provider
        if provider is not None:
            for processor in self._lent:
                provider.add_span_processor(_Lent(processor))

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Attributes = None,
    ) -> trace.Tracer:
        return _ForwardingTracer(
            self, (instrumenting_module_name, instrumenting_library_version, schema_url, attributes)
        )

    def fallback_tracer(self, scope: tuple[Any, ...]) -> trace.Tracer:
        """Spans made while no Telemetry is current (after its shutdown) still
        carry a valid context, so propagation keeps working; only the processors
        added here see them."""
        return SdkTracerProvider.get_tracer(self, *scope)

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        self._lent.append(span_processor)
        super().add_span_processor(_Lent(span_processor))
        if self.target is not None:
            self.target.add_span_processor(_Lent(span_processor))

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True if self.target is None else self.target.force_flush(timeout_millis)

    def shutdown(self) -> None:
        for processor in self._lent:
            processor.shutdown()


class _ToCurrentTelemetry(SpanProcessor):
    """Attached to a global provider that someone installed before us (a test
    harness): hands the spans of global tracers to the current Telemetry too,
    relabelled with its resource so they name the right service."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        current = _current
        if current is not None:
            current.span_processor.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        current = _current
        if current is None:
            return
        relabelled = ReadableSpan(
            name=span.name,
            context=span.context,
            parent=span.parent,
            resource=current.tracer_provider.resource,
            attributes=span.attributes,
            events=span.events,
            links=span.links,
            kind=span.kind,
            status=span.status,
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope,
        )
        current.span_processor.on_end(relabelled)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        current = _current
        return True if current is None else current.span_processor.force_flush(timeout_millis)


_init_lock = threading.Lock()
_forwarding: _ForwardingTracerProvider | None = None
_globals_installed = False
_current: Telemetry | None = None


def _install_globals(meter_provider: MeterProvider) -> None:
    """Claim the global tracer and meter providers, once per process."""
    global _forwarding, _globals_installed
    if _globals_installed:
        return
    _globals_installed = True
    metrics.set_meter_provider(meter_provider)
    existing = trace.get_tracer_provider()
    if isinstance(existing, SdkTracerProvider):
        existing.add_span_processor(_ToCurrentTelemetry())
        _log.warning(
            "tracer_provider_preset",
            detail="a tracer provider was installed before init_telemetry; "
            "spans of global tracers are exported through both",
        )
        return
    _forwarding = _ForwardingTracerProvider()
    trace.set_tracer_provider(_forwarding)
    if trace.get_tracer_provider() is not _forwarding:
        _log.warning("tracer_provider_preset", detail="spans of global tracers bypass Driftloop")


class Telemetry:
    """Handle on the tracer and meter providers of this process."""

    def __init__(
        self,
        settings: Settings,
        tracer_provider: SdkTracerProvider,
        span_processor: SynchronousMultiSpanProcessor,
        meter_provider: MeterProvider,
        traces_path: Path | None,
    ) -> None:
        self.service_name = settings.service_name
        self.service_version = settings.service_version
        self.tracer_provider = tracer_provider
        # Every processor of tracer_provider, including ones added later.
        self.span_processor = span_processor
        self.meter_provider = meter_provider
        self.traces_path = traces_path
        self._key = _settings_key(settings)
        self._shut_down = False

    def get_tracer(self, name: str = "driftloop") -> trace.Tracer:
        return self.tracer_provider.get_tracer(name, self.service_version)

    @property
    def meter(self) -> metrics.Meter:
        return self.meter_provider.get_meter("driftloop", self.service_version)

    @property
    def is_shut_down(self) -> bool:
        return self._shut_down

    def force_flush(self, timeout_millis: int = 10_000) -> bool:
        """Export every finished span now; True when all exporters succeeded."""
        return self.tracer_provider.force_flush(timeout_millis)

    def shutdown(self) -> None:
        """Flush and close the exporters; spans started later are dropped."""
        global _current
        with _init_lock:
            if self._shut_down:
                return
            self._shut_down = True
            if _forwarding is not None and _forwarding.target is self.tracer_provider:
                _forwarding.retarget(None)
            if _current is self:
                _current = None
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def _settings_key(settings: Settings) -> tuple[Any, ...]:
    return (
        settings.service_name,
        settings.service_version,
        settings.environment,
        settings.otlp_endpoint,
        settings.traces_dir.resolve(),
    )


def _resource(settings: Settings) -> Resource:
    return Resource.create(
        {
            SERVICE_NAME: settings.service_name,
            SERVICE_VERSION: settings.service_version,
            DEPLOYMENT_ENVIRONMENT: settings.environment,
        }
    )


def init_telemetry(settings: Settings, *, configure_logs: bool = True) -> Telemetry:
    """Set up tracing, propagation and logging for this process; return its handle.

    Calling it again with the same service and destinations returns the same
    handle. Different settings (a test with its own ``DRIFTLOOP_HOME``) build a new
    handle, which from then on receives the spans of every global tracer.
    """
    global _current
    if configure_logs:
        configure_logging(settings.service_name, settings.log_level)
    propagate.set_global_textmap(
        CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
    )

    with _init_lock:
        if _current is not None and _current._key == _settings_key(settings):
            return _current

        resource = _resource(settings)
        span_processor = SynchronousMultiSpanProcessor()  # type: ignore[no-untyped-call]
        tracer_provider = SdkTracerProvider(resource=resource, active_span_processor=span_processor)
        readers: list[MetricReader] = []
        traces_path: Path | None = None
        if settings.otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                OTLPMetricExporter,
            )
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter,
            )

            tracer_provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint))
            )
            readers.append(
                PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=settings.otlp_endpoint))
            )
        else:
            traces_path = traces_file(settings.traces_dir, settings.service_name)
            traces_path.parent.mkdir(parents=True, exist_ok=True)
            tracer_provider.add_span_processor(
                BatchSpanProcessor(
                    OtlpJsonLinesSpanExporter(traces_path),
                    schedule_delay_millis=_LOCAL_EXPORT_DELAY_MS,
                )
            )
        meter_provider = MeterProvider(resource=resource, metric_readers=readers)

        telemetry = Telemetry(
            settings, tracer_provider, span_processor, meter_provider, traces_path
        )
        _install_globals(meter_provider)
        if _forwarding is not None:
            _forwarding.retarget(tracer_provider)
        _current = telemetry

    _log.info(
        "telemetry_started",
        version=settings.service_version,
        environment=settings.environment,
        traces=settings.otlp_endpoint or str(traces_path),
    )
    return telemetry


# --------------------------------------------------------------------------- metrics


def serve_metrics(settings: Settings) -> int | None:
    """Serve this service's /metrics on its port (``settings.metrics_port_for``).

    Returns the port, or None when the service's port is 0 (metrics off) or taken.
    Listens on ``grpc.bind_host`` when set (a container), else on loopback. A port
    already in use is logged as an error and the service runs on without metrics:
    losing the scrape endpoint must not take the service down with it.
    """
    port = settings.metrics_port_for(settings.service_name)
    if not port:
        return None
    addr = settings.grpc.bind_host or "127.0.0.1"
    try:
        return start_metrics_server(port, addr=addr)
    except OSError as error:
        _log.error("metrics_server_failed", address=addr, port=port, error=str(error))
        return None


def start_metrics_server(port: int = 0, addr: str = "127.0.0.1") -> int:
    """Serve the process's Prometheus metrics on ``http://addr:port/metrics``.

    Port 0 picks a free port; the port actually bound is returned. The server runs
    in a daemon thread for the life of the process.
    """
    server, _thread = prometheus_client.start_http_server(port, addr=addr)
    bound: int = server.server_port
    _log.info("metrics_server_started", address=addr, port=bound)
    return bound
