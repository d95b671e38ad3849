"""Shared fixtures: the real embedded broker, an in-memory span store and fresh
telemetry for tests that set it up themselves."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from driftloop_core.broker import EmbeddedBroker, free_port
from driftloop_core.settings import Settings, load_settings
from opentelemetry import trace
from opentelemetry.metrics import _internal as metrics_api
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="session")
def span_store() -> InMemorySpanExporter:
    """Every span finished in this test process (an SDK tracer provider is installed once)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    return _EXPORTER


@pytest.fixture
def spans(span_store: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    span_store.clear()
    yield span_store


# The module attributes that hold OpenTelemetry's global tracer and meter providers.
_TRACE_GLOBALS = ("_TRACER_PROVIDER_SET_ONCE", "_TRACER_PROVIDER", "_PROXY_TRACER_PROVIDER")
_METRICS_GLOBALS = ("_METER_PROVIDER_SET_ONCE", "_METER_PROVIDER", "_PROXY_METER_PROVIDER")


def _empty_telemetry_globals() -> None:
    """What `opentelemetry.test.globals_test.reset_trace_globals` and
    `reset_metrics_globals` do (opentelemetry-python's own test utilities)."""
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    trace._PROXY_TRACER_PROVIDER = trace.ProxyTracerProvider()
    metrics_api._METER_PROVIDER_SET_ONCE = Once()
    metrics_api._METER_PROVIDER = None
    metrics_api._PROXY_METER_PROVIDER = metrics_api._ProxyMeterProvider()


@pytest.fixture
def fresh_telemetry() -> Iterator[Callable[[], None]]:
    """Telemetry of the test's own: `init_telemetry` in the test installs its providers.

    OpenTelemetry lets a process set its global tracer and meter providers once,
    and `init_telemetry` does. This empties the global slots before the test and
    puts back afterwards what the test found (the session's `span_store`
    provider), so tests that start telemetry with their own settings do not see
    each other's. Call the fixture's value to empty the slots again mid-test, as
    if a second process started. A tracer taken before its first span binds to
    the provider installed when it starts that span, and stays bound.
    """
    saved = (
        [getattr(trace, name) for name in _TRACE_GLOBALS],
        [getattr(metrics_api, name) for name in _METRICS_GLOBALS],
    )
    _empty_telemetry_globals()
    yield _empty_telemetry_globals
    for name, value in zip(_TRACE_GLOBALS, saved[0], strict=True):
        setattr(trace, name, value)
    for name, value in zip(_METRICS_GLOBALS, saved[1], strict=True):
        setattr(metrics_api, name, value)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A real Tansu broker on a free port, shared by the whole test session."""
    log_file = tmp_path_factory.mktemp("broker") / "broker.log"
    running = EmbeddedBroker(free_port(), log_file=log_file)
    running.start()
    try:
        asyncio.run(running.wait_ready())
        yield running
    finally:
        running.stop()


@pytest.fixture
def settings(broker: EmbeddedBroker, tmp_path: Path) -> Settings:
    """Settings pointing at the session broker, with a private DRIFTLOOP_HOME."""
    os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    return load_settings(
        home=tmp_path / "home",
        kafka_bootstrap=broker.bootstrap,
        service_name="test",
    )


@pytest.fixture
def unique() -> str:
    """A fresh suffix, so each test gets its own topics and groups."""
    return uuid.uuid4().hex[:8]


# Where the end-to-end tests live (each is also marked `e2e`).
E2E_DIRS = ("tests/e2e/", "tests/faults/")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`make test`), end-to-end tests run one after another on
    one worker: each starts a whole stack of processes, and two stacks at once on
    two cores starve each other (the feature store falls seconds behind, the
    closed loop's accuracy collapses, health checks time out). Everything else
    spreads over the other workers. They also get a longer timeout."""
    for item in items:
        if item.get_closest_marker("e2e"):
            if not item.nodeid.startswith(E2E_DIRS):
                raise pytest.UsageError(
                    f"{item.nodeid}: end-to-end tests live under {' or '.join(E2E_DIRS)}"
                )
            item.add_marker(pytest.mark.xdist_group("e2e"))
            if not item.get_closest_marker("timeout"):
                item.add_marker(pytest.mark.timeout(300))
    # The closed-loop runs go last, when the other worker has most likely
    # finished: their accuracy depends on the feature store keeping up.
    items.sort(key=lambda item: item.path.name == "test_loop.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadgroup` with the end-to-end tests as one group, in collection order.

    pytest-xdist 3.8 learns an item's `xdist_group` from a suffix it appends to
    the node id on the worker, which pytest 9 no longer lets it change
    (pytest-dev/pytest-xdist#1386): without this the marker is silently ignored
    and end-to-end tests spread over every worker. The scheduler only sees node
    ids, so the group follows the folder (`E2E_DIRS`, checked against the marker
    at collection).
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class EndToEndGroup(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith(E2E_DIRS):
                return "e2e"
            return str(super()._split_scope(nodeid))

    return EndToEndGroup(config, log)
