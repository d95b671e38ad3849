"""A real grpc.aio server built by driftloop_core.grpc, called over loopback.

The servicer is a generic handler with raw-bytes messages, so these tests stand on
grpc alone and not on Driftloop's generated protos.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from driftloop_core.grpc import GrpcServer, build_server, insecure_channel
from driftloop_core.settings import GrpcSettings, Settings, load_settings
from driftloop_core.telemetry import Telemetry, init_telemetry, start_metrics_server
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY
from pydantic import SecretStr

pytestmark = pytest.mark.integration

SERVICE = "driftloop.test.Echo"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class EchoServicer:
    """Tiny handlers showing each outcome the interceptors must get right."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.slow_started = asyncio.Event()
        self.wanted_in_flight = 1

    async def echo(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return request

    async def fail(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        raise RuntimeError("secret database password in this message")

    async def down(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        raise sqlite3.OperationalError("unable to open database file")

    async def reject(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "amount: must be >= 0")
        raise AssertionError("abort returned")

    async def slow(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        self.in_flight += 1
        if self.in_flight >= self.wanted_in_flight:
            self.slow_started.set()
        try:
            await asyncio.sleep(float(request.decode()))
        finally:
            self.in_flight -= 1
        return b"done"

    async def count(
        self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        for i in range(int(request.decode())):
            yield str(i).encode()

    async def write(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        for i in range(int(request.decode())):
            await context.write(str(i).encode())

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Echo": grpc.unary_unary_rpc_method_handler(self.echo),
                "Fail": grpc.unary_unary_rpc_method_handler(self.fail),
                "Down": grpc.unary_unary_rpc_method_handler(self.down),
                "Reject": grpc.unary_unary_rpc_method_handler(self.reject),
                "Slow": grpc.unary_unary_rpc_method_handler(self.slow),
                "Count": grpc.unary_stream_rpc_method_handler(self.count),
                "Write": grpc.unary_stream_rpc_method_handler(self.write),
            },
        )


def _add_generic(handler: grpc.GenericRpcHandler, server: grpc.aio.Server) -> None:
    server.add_generic_rpc_handlers((handler,))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(home=tmp_path / "home", service_name="grpc-test")


@pytest.fixture
def telemetry(settings: Settings, fresh_telemetry: Callable[[], None]) -> Any:
    telemetry = init_telemetry(settings)
    exporter = InMemorySpanExporter()
    telemetry.tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield telemetry, exporter
    telemetry.shutdown()


@pytest.fixture
def spans(telemetry: tuple[Telemetry, InMemorySpanExporter]) -> InMemorySpanExporter:
    return telemetry[1]


@pytest.fixture
def servicer() -> EchoServicer:
    return EchoServicer()


MakeServer = Callable[..., GrpcServer]


@pytest.fixture
async def make_server(
    settings: Settings, servicer: EchoServicer, spans: InMemorySpanExporter
) -> AsyncIterator[MakeServer]:
    servers: list[GrpcServer] = []

    def make(**grpc_settings: Any) -> GrpcServer:
        custom = settings.model_copy(
            update={"grpc": GrpcSettings(**{"grace_period_s": 2.0, **grpc_settings})}
        )
        server = build_server(
            custom, [(_add_generic, servicer.handler(), SERVICE)], "127.0.0.1:0", drain_s=0.3
        )
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop(0)


@pytest.fixture
async def server(make_server: MakeServer) -> GrpcServer:
    server = make_server()
    await server.start()
    return server


@pytest.fixture
async def channel(server: GrpcServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server.endpoint) as channel:
        yield channel


def _unary(channel: grpc.aio.Channel, method: str) -> Any:
    return channel.unary_unary(f"/{SERVICE}/{method}")


def _handled(method: str, code: str) -> float:
    value = REGISTRY.get_sample_value(
        "driftloop_grpc_server_handled_total",
        {"service": SERVICE, "method": method, "code": code},
    )
    return value or 0.0


async def _counted(method: str, code: str, expected: float) -> float:
    """The handled count once it reaches `expected` (or after 5 s, whatever it is).

    The server counts a call when its handler returns, and an abort's status can
    reach the client (in this same event loop) a few iterations before that."""
    for _ in range(500):
        if _handled(method, code) >= expected:
            break
        await asyncio.sleep(0.01)
    return _handled(method, code)


async def _health(channel: grpc.aio.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    status: int = response.status
    return status


async def test_health_reports_serving_for_the_server_and_each_service(
    channel: grpc.aio.Channel,
) -> None:
    assert await _health(channel) == SERVING
    assert await _health(channel, SERVICE) == SERVING
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _health(channel, "no.such.Service")
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def _reflected(channel: grpc.aio.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names: set[str] = set()
    async for response in call:
        names |= {s.name for s in response.list_services_response.service}
    return names


async def test_reflection_is_off_unless_asked_for(
    channel: grpc.aio.Channel, make_server: MakeServer
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as off:
        await _reflected(channel)
    assert off.value.code() == grpc.StatusCode.UNIMPLEMENTED
    server = make_server(reflection=True)
    await server.start()
    async with grpc.aio.insecure_channel(server.endpoint) as reflecting:
        names = await _reflected(reflecting)
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


async def test_authorization_is_decided_per_call_not_per_method(settings: Settings) -> None:
    """A method first called with a valid token stays closed to the next caller
    without one (the interceptors after authorization cache per method)."""
    lookup = "/driftloop.v1.FeatureService/GetOnlineFeatures"
    features = grpc.method_handlers_generic_handler(
        "driftloop.v1.FeatureService",
        {"GetOnlineFeatures": grpc.unary_unary_rpc_method_handler(lambda request, _: request)},
    )
    guarded = settings.model_copy(update={"read_token": SecretStr("r")})
    server = build_server(
        guarded, [(_add_generic, features, "driftloop.v1.FeatureService")], "127.0.0.1:0", drain_s=0
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.endpoint) as channel:
            call = channel.unary_unary(lookup)
            for _ in range(2):
                assert await call(b"x", metadata=(("authorization", "Bearer r"),)) == b"x"
                for metadata in ((), (("authorization", "Bearer wrong"),)):
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await call(b"x", metadata=metadata)
                    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
                    assert "needs the 'read' role" in (refused.value.details() or "")
    finally:
        await server.stop(0)


async def test_with_authorization_on_a_method_outside_the_table_is_refused_to_all(
    settings: Settings, servicer: EchoServicer
) -> None:
    guarded = settings.model_copy(update={"admin_token": SecretStr("a")})
    server = build_server(
        guarded, [(_add_generic, servicer.handler(), SERVICE)], "127.0.0.1:0", drain_s=0
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.endpoint) as channel:
            echo = channel.unary_unary(f"/{SERVICE}/Echo")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await echo(b"hi", metadata=(("authorization", "Bearer a"),))
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "not in the authorization table" in (refused.value.details() or "")
            # Health still answers without a credential.
            assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop(0)


async def test_unexpected_exception_becomes_internal_logged_once_and_server_carries_on(
    channel: grpc.aio.Channel, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _handled("Fail", "INTERNAL")

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _unary(channel, "Fail")(b"x", timeout=5)

    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert raised.value.details().startswith("internal error")
    assert "secret" not in raised.value.details()
    assert await _unary(channel, "Echo")(b"still here", timeout=5) == b"still here"
    assert await _counted("Fail", "INTERNAL", before + 1) == before + 1

    err = capsys.readouterr().err
    failures = [line for line in err.splitlines() if "grpc_handler_failed" in line]
    assert len(failures) == 1
    assert "RuntimeError: secret database password" in failures[0]
    assert '"grpc_method": "Fail"' in failures[0]


async def test_a_dependency_outage_answers_unavailable_so_callers_retry(
    channel: grpc.aio.Channel,
) -> None:
    before = _handled("Down", "UNAVAILABLE")

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _unary(channel, "Down")(b"x", timeout=5)

    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "OperationalError" in raised.value.details()
    assert "database file" not in raised.value.details()
    assert await _counted("Down", "UNAVAILABLE", before + 1) == before + 1


async def test_deliberate_abort_passes_through_untouched(
    channel: grpc.aio.Channel, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _handled("Reject", "INVALID_ARGUMENT")

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _unary(channel, "Reject")(b"x", timeout=5)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "amount: must be >= 0"
    assert await _counted("Reject", "INVALID_ARGUMENT", before + 1) == before + 1
    assert "grpc_handler_failed" not in capsys.readouterr().err


async def test_streaming_handlers_of_both_styles_stream_and_are_counted(
    channel: grpc.aio.Channel,
) -> None:
    before_count = _handled("Count", "OK")
    before_write = _handled("Write", "OK")

    counted = [m async for m in channel.unary_stream(f"/{SERVICE}/Count")(b"3", timeout=5)]
    written = [m async for m in channel.unary_stream(f"/{SERVICE}/Write")(b"2", timeout=5)]

    assert counted == [b"0", b"1", b"2"]
    assert written == [b"0", b"1"]
    assert await _counted("Count", "OK", before_count + 1) == before_count + 1
    assert await _counted("Write", "OK", before_write + 1) == before_write + 1


async def test_calls_beyond_max_concurrent_rpcs_get_resource_exhausted(
    make_server: MakeServer, servicer: EchoServicer
) -> None:
    server = make_server(max_concurrent_rpcs=2)
    await server.start()
    servicer.wanted_in_flight = 2
    async with grpc.aio.insecure_channel(server.endpoint) as channel:
        slow = _unary(channel, "Slow")
        first = asyncio.ensure_future(slow(b"0.5", timeout=5))
        second = asyncio.ensure_future(slow(b"0.5", timeout=5))
        await asyncio.wait_for(servicer.slow_started.wait(), 5)

        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await slow(b"0", timeout=5)

        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await first == b"done"
        assert await second == b"done"
        assert await slow(b"0", timeout=5) == b"done"


async def test_metrics_are_served_over_http(channel: grpc.aio.Channel) -> None:
    await _unary(channel, "Echo")(b"x", timeout=5)
    port = start_metrics_server(0)

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            body: bytes = response.read()
            return body.decode()

    text = await asyncio.to_thread(scrape)
    assert (
        f'driftloop_grpc_server_handled_total{{code="OK",method="Echo",service="{SERVICE}"}}'
        in text
    )
    assert (
        f'driftloop_grpc_server_handling_seconds_count{{method="Echo",service="{SERVICE}"}}' in text
    )


async def test_stop_reports_not_serving_then_drains_in_flight_calls(
    server: GrpcServer, channel: grpc.aio.Channel, servicer: EchoServicer
) -> None:
    in_flight = asyncio.ensure_future(_unary(channel, "Slow")(b"0.6", timeout=5))
    await asyncio.wait_for(servicer.slow_started.wait(), 5)

    stopping = asyncio.ensure_future(server.stop(grace=5))
    await asyncio.sleep(0.05)
    # Inside the drain window new calls are still answered, with the truth.
    assert await _health(channel) == NOT_SERVING
    assert await _health(channel, SERVICE) == NOT_SERVING

    assert await in_flight == b"done"
    await asyncio.wait_for(stopping, 10)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _unary(channel, "Echo")(b"x", timeout=1)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_sigterm_stops_the_server_gracefully(
    make_server: MakeServer, servicer: EchoServicer
) -> None:
    server = make_server()
    previous = signal.getsignal(signal.SIGTERM)
    serving = asyncio.ensure_future(server.serve_until_signal())
    try:
        async with asyncio.timeout(5):
            # Nothing announces an installed signal handler: poll, or the
            # SIGTERM below would kill the test process.
            while signal.getsignal(signal.SIGTERM) is previous:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        async with grpc.aio.insecure_channel(server.endpoint) as channel:
            in_flight = asyncio.ensure_future(_unary(channel, "Slow")(b"0.5", timeout=5))
            await asyncio.wait_for(servicer.slow_started.wait(), 5)

            os.kill(os.getpid(), signal.SIGTERM)

            assert await in_flight == b"done"
            await asyncio.wait_for(serving, 10)
    finally:
        serving.cancel()
        signal.signal(signal.SIGTERM, previous)


async def test_traceparent_from_the_caller_parents_the_server_span(
    channel: grpc.aio.Channel, spans: InMemorySpanExporter
) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent_id = "00f067aa0ba902b7"
    metadata = (("traceparent", f"00-{trace_id}-{parent_id}-01"),)

    await _health(channel)
    assert await _unary(channel, "Echo")(b"x", metadata=metadata, timeout=5) == b"x"

    (server_span,) = [s for s in spans.get_finished_spans() if s.name == f"/{SERVICE}/Echo"]
    assert server_span.kind == trace.SpanKind.SERVER
    assert trace.format_trace_id(server_span.context.trace_id) == trace_id
    assert server_span.parent is not None
    assert trace.format_span_id(server_span.parent.span_id) == parent_id
    assert not [s for s in spans.get_finished_spans() if "Health" in s.name]


async def test_failed_call_marks_its_server_span_as_error(
    spans: InMemorySpanExporter, channel: grpc.aio.Channel
) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        await _unary(channel, "Fail")(b"x", timeout=5)

    # The client can hold the error before the server's interceptor ends its span.
    for _ in range(100):
        ended = [s for s in spans.get_finished_spans() if s.name == f"/{SERVICE}/Fail"]
        if ended:
            break
        await asyncio.sleep(0.02)
    (server_span,) = ended
    assert server_span.status.status_code == trace.StatusCode.ERROR


async def test_client_channel_injects_its_trace_into_the_server_span(
    server: GrpcServer, settings: Settings, spans: InMemorySpanExporter
) -> None:
    async with insecure_channel(server.endpoint, settings) as channel:
        assert await _unary(channel, "Echo")(b"x", timeout=5) == b"x"
        assert await _health(channel) == SERVING

    finished = spans.get_finished_spans()
    (client_span,) = [s for s in finished if s.kind == trace.SpanKind.CLIENT]
    (server_span,) = [s for s in finished if s.kind == trace.SpanKind.SERVER]
    assert server_span.context.trace_id == client_span.context.trace_id
    assert server_span.parent is not None
    assert server_span.parent.span_id == client_span.context.span_id
    assert not [s for s in finished if "Health" in s.name]


async def test_an_untraced_root_joins_a_callers_trace_but_never_starts_one(
    settings: Settings, servicer: EchoServicer, spans: InMemorySpanExporter
) -> None:
    echo = f"/{SERVICE}/Echo"
    server = build_server(
        settings,
        [(_add_generic, servicer.handler(), SERVICE)],
        "127.0.0.1:0",
        drain_s=0.1,
        untraced_roots=[echo],
    )
    await server.start()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    metadata = (("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01"),)
    try:
        async with grpc.aio.insecure_channel(server.endpoint) as channel:
            assert await _unary(channel, "Echo")(b"alone", timeout=5) == b"alone"
            assert await _unary(channel, "Echo")(b"joined", metadata=metadata, timeout=5)
    finally:
        await server.stop(0)

    (server_span,) = [s for s in spans.get_finished_spans() if s.name == echo]
    assert trace.format_trace_id(server_span.context.trace_id) == trace_id
    assert server_span.attributes is not None
    assert server_span.attributes["rpc.grpc.status_code"] == 0
