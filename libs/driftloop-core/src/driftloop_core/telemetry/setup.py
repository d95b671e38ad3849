"""Traces, metrics and logs for one Driftloop process, set up by one call.

Every service calls :func:`init_telemetry` from ``__main__`` before it builds
anything else. It names the process in an OpenTelemetry resource, installs W3C
trace-context and baggage propagation (so a trace follows an event over Kafka
headers and gRPC metadata), configures JSON logs stamped with the active trace,
installs the global tracer and meter providers, and picks where spans go:

* ``OTEL_EXPORTER_OTLP_ENDPOINT`` set: OTLP over gRPC to a collector (production);
* otherwise OTLP-JSON lines under ``DRIFTLOOP_HOME/traces/<service>.jsonl``
  (:mod:`driftloop_core.telemetry.otlp_file`), read back by ``driftloop traces``.

OpenTelemetry lets a process set its global providers once, and so does this:
a second call returns the handle of the first, whatever its settings (a warning
says so when they differ). A test that needs telemetry of its own empties the
global slots first, with the ``fresh_telemetry`` fixture of the root conftest.

Metrics that SREs scrape live in ``prometheus_client`` (``driftloop_`` prefix) and
are served by :func:`serve_metrics`; the OpenTelemetry meter is exported only when
a collector is configured.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import prometheus_client
from opentelemetry import metrics, propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import (
    DEPLOYMENT_ENVIRONMENT,
    SERVICE_NAME,
    SERVICE_VERSION,
    Resource,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from driftloop_core.logging import configure_logging, get_logger
from driftloop_core.settings import Settings
from driftloop_core.telemetry.otlp_file import OtlpJsonLinesSpanExporter, traces_file
from driftloop_core.telemetry.sampling import loop_first

__all__ = ["Telemetry", "init_telemetry", "serve_metrics", "start_metrics_server"]

_log = get_logger(__name__)

# Spans reach the local store within a second, so `driftloop traces` right after
# a request shows it; the SDK default of five seconds feels like a lost span.
_LOCAL_EXPORT_DELAY_MS = 1000


class Telemetry:
    """Handle on the tracer and meter providers of this process."""

    def __init__(
        self,
        settings: Settings,
        tracer_provider: TracerProvider,
        meter_provider: MeterProvider,
        traces_path: Path | None,
    ) -> None:
        self.service_name = settings.service_name
        self.service_version = settings.service_version
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.traces_path = traces_path
        self.settings_key = _settings_key(settings)
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
        """Flush and close the exporters, on the way out of the process; spans
        started later are dropped."""
        with _lock:
            if self._shut_down:
                return
            self._shut_down = True
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


_lock = threading.Lock()
# The handle init_telemetry built, and the global tracer provider it left in place:
# while that provider is still the global one, the handle is this process's.
_installed: tuple[Telemetry, trace.TracerProvider] | None = None


def _settings_key(settings: Settings) -> tuple[Any, ...]:
    return (
        settings.service_name,
        settings.service_version,
        settings.environment,
        settings.otlp_endpoint,
        settings.traces_dir.resolve(),
        settings.trace_sample_ratio,
    )


def _resource(settings: Settings) -> Resource:
    return Resource.create(
        {
            SERVICE_NAME: settings.service_name,
            SERVICE_VERSION: settings.service_version,
            DEPLOYMENT_ENVIRONMENT: settings.environment,
        }
    )


def _build(settings: Settings) -> Telemetry:
    """Providers with the exporters ``settings`` ask for, not yet installed."""
    resource = _resource(settings)
    # OTEL_TRACES_SAMPLER, when set, is the SDK's to read; otherwise ours.
    sampler = (
        None if os.environ.get("OTEL_TRACES_SAMPLER") else loop_first(settings.trace_sample_ratio)
    )
    tracer_provider = TracerProvider(resource=resource, sampler=sampler)
    readers: list[MetricReader] = []
    traces_path: Path | None = None
    if settings.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

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
    return Telemetry(settings, tracer_provider, meter_provider, traces_path)


def init_telemetry(settings: Settings, *, configure_logs: bool = True) -> Telemetry:
    """Set up tracing, propagation and logging for this process; return its handle.

    The first call installs the global tracer and meter providers. Later calls
    return the same handle and change no provider: OpenTelemetry allows one per
    process, and tracers that libraries took at import time are bound to it.
    """
    global _installed
    if configure_logs:
        configure_logging(settings.service_name, settings.log_level)
    propagate.set_global_textmap(
        CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
    )

    with _lock:
        if _installed is not None and trace.get_tracer_provider() is _installed[1]:
            telemetry = _installed[0]
            if telemetry.settings_key != _settings_key(settings) or telemetry.is_shut_down:
                _log.warning(
                    "telemetry_already_started",
                    detail="a process sets up telemetry once; the first settings stay",
                    service=telemetry.service_name,
                    traces=str(telemetry.traces_path or settings.otlp_endpoint),
                    shut_down=telemetry.is_shut_down,
                )
            return telemetry

        telemetry = _build(settings)
        trace.set_tracer_provider(telemetry.tracer_provider)
        metrics.set_meter_provider(telemetry.meter_provider)
        installed = trace.get_tracer_provider()
        if installed is not telemetry.tracer_provider:
            # Someone (an auto-instrumentation harness) got there first; its
            # provider keeps the spans of global tracers.
            _log.warning(
                "tracer_provider_preset",
                detail="spans of global tracers go to the provider installed before init_telemetry",
            )
        _installed = (telemetry, installed)

    _log.info(
        "telemetry_started",
        version=settings.service_version,
        environment=settings.environment,
        traces=settings.otlp_endpoint or str(telemetry.traces_path),
    )
    return telemetry


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
