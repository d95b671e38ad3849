"""Every service's /metrics endpoint, as Prometheus scrapes it."""

from __future__ import annotations

import socket
import urllib.request

import driftloop_core.grpc.interceptors  # noqa: F401  (a service imports its metrics)
from driftloop_core.broker import free_port
from driftloop_core.settings import Settings
from driftloop_core.telemetry import serve_metrics


def test_a_service_serves_prometheus_metrics_on_its_port(settings: Settings) -> None:
    port = free_port()
    ours = settings.model_copy(update={"service_name": "ingestion"})
    ours.endpoints.metrics["ingestion"] = port
    assert serve_metrics(ours) == port
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "# TYPE driftloop_grpc_server_handled_total counter" in body
    assert "python_gc_objects_collected_total" in body


def test_a_taken_metrics_port_leaves_the_service_running(settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ours = settings.model_copy(
            update={"service_name": "drift", "metrics_port": taken.getsockname()[1]}
        )
        assert serve_metrics(ours) is None


def test_metrics_can_be_turned_off(settings: Settings) -> None:
    ours = settings.model_copy(update={"service_name": "trainer"})
    ours.endpoints.metrics["trainer"] = 0
    assert serve_metrics(ours) is None
