"""The server interceptors every Driftloop gRPC service runs behind.

Tracing is OpenTelemetry's gRPC instrumentation (``aio_server_interceptor``), as on
the client side: a SERVER span named ``/pkg.Service/Method`` with the RPC semantic
attributes, continuing the caller's trace from ``traceparent`` metadata. Its filter
leaves ``grpc.health.v1.Health`` untraced (probes would bury the spans that
matter) and lets the hot read methods of ``untraced_roots`` join a caller's trace
without ever starting one.

:class:`ObservedInterceptor`, inside it, does the rest in a single wrapper built
once per method:

1. metrics: ``driftloop_grpc_server_handled_total`` and
   ``driftloop_grpc_server_handling_seconds`` by service, method and final code,
   which also lands on the span as ``rpc.grpc.status_code`` (a cancelled or
   timed-out call included, which the instrumentation alone records as OK);
2. errors: an exception a handler did not mean to raise becomes ``INTERNAL`` with a
   short message, logged once with its traceback (``UNAVAILABLE`` when it is a
   dependency's passing outage, see ``kafka.retry.is_transient``); a deliberate
   ``context.abort(...)`` passes through untouched.

Metrics and errors stay in one layer: a chain of generic interceptors cost about
40% of a bare server's throughput on the lookup path. Handlers may be coroutines,
async generators, or coroutines that stream with ``context.write`` (the health
``Watch`` does).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any

import grpc
import grpc.aio
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.trace import Status, StatusCode
from prometheus_client import Counter, Histogram

from driftloop_core.kafka.retry import is_transient
from driftloop_core.logging import get_logger

__all__ = [
    "GRPC_SERVER_HANDLED",
    "GRPC_SERVER_HANDLING_SECONDS",
    "HEALTH_SERVICE",
    "ObservedInterceptor",
    "default_server_interceptors",
    "split_method",
]

HEALTH_SERVICE = "grpc.health.v1.Health"

# Process-wide, like the default registry they live in: built once, shared by
# every server the process starts.
GRPC_SERVER_HANDLED = Counter(
    "driftloop_grpc_server_handled_total",
    "RPCs completed on the server, by gRPC status code.",
    ["service", "method", "code"],
)
GRPC_SERVER_HANDLING_SECONDS = Histogram(
    "driftloop_grpc_server_handling_seconds",
    "Time from the start of an RPC's handler to its last response.",
    ["service", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

_log = get_logger(__name__)

Continuation = Callable[
    [grpc.HandlerCallDetails], Awaitable["grpc.RpcMethodHandler[Any, Any] | None"]
]
Behavior = Callable[[Any, Any], Any]


def split_method(full_method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` to ``("pkg.Service", "Method")``."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service or "unknown", method or full_method


def _rewrap(
    handler: grpc.RpcMethodHandler[Any, Any],
    wrap_unary_response: Callable[[Behavior], Behavior],
    wrap_streaming_response: Callable[[Behavior], Behavior],
) -> grpc.RpcMethodHandler[Any, Any]:
    """A copy of ``handler`` whose behavior is wrapped, keeping its (de)serializers."""
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(
            wrap_streaming_response(_behavior(handler.stream_stream)),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(
            wrap_unary_response(_behavior(handler.stream_unary)),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(
            wrap_streaming_response(_behavior(handler.unary_stream)),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.unary_unary_rpc_method_handler(
        wrap_unary_response(_behavior(handler.unary_unary)),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _behavior(function: Any) -> Behavior:
    """The handler's behavior for its call shape (the others are None)."""
    assert function is not None
    behavior: Behavior = function
    return behavior


async def _settle(result: Any) -> Any:
    """Await a coroutine handler's result; a plain function's result is already here."""
    if inspect.isawaitable(result):
        return await result
    return result


async def _responses(result: Any) -> AsyncIterator[Any]:
    """The responses of a streaming handler, whatever style it is written in.

    Responses a handler sends itself with ``context.write`` go straight out; grpc
    accepts them next to the (then empty) async generator the wrappers return.
    """
    if hasattr(result, "__aiter__"):
        async for response in result:
            yield response
    elif inspect.isawaitable(result):
        await result
    elif result is not None:
        for response in result:
            yield response


def _final_code(context: Any, error: BaseException | None) -> grpc.StatusCode:
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        return next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    # grpc answers UNKNOWN for an exception nobody turned into a status.
    return grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN


async def _abort_internal(context: Any, full_method: str, error: Exception) -> None:
    """Log ``error`` with its traceback and answer INTERNAL; raises AbortError.

    A passing outage of a dependency (a database, a disk, a peer: what the
    Kafka consumers retry) answers UNAVAILABLE instead, naming only the error's
    type, so that callers retry as they would against a restarting server."""
    service, method = split_method(full_method)
    if is_transient(error):
        _log.warning(
            "grpc_dependency_unavailable",
            grpc_service=service,
            grpc_method=method,
            error_type=type(error).__name__,
            error=str(error)[:200],
        )
        await context.abort(
            grpc.StatusCode.UNAVAILABLE,
            f"a dependency is unavailable ({type(error).__name__}); retry",
        )
    _log.error(
        "grpc_handler_failed",
        grpc_service=service,
        grpc_method=method,
        error_type=type(error).__name__,
        exc_info=error,
    )
    details = "internal error"
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        # Lets a caller hand an operator the trace that holds the traceback.
        details += " (trace_id " + trace.format_trace_id(span_context.trace_id) + ")"
    await context.abort(grpc.StatusCode.INTERNAL, details)


class _Observed:
    """Metrics and error mapping for one method."""

    def __init__(self, full_method: str) -> None:
        self.full_method = full_method
        self.service, self.method = split_method(full_method)
        self.seconds = GRPC_SERVER_HANDLING_SECONDS.labels(self.service, self.method)
        self._handled: dict[str, Any] = {}

    def finish(self, started: float, context: Any, error: BaseException | None) -> None:
        code = _final_code(context, error)
        counter = self._handled.get(code.name)
        if counter is None:
            counter = self._handled[code.name] = GRPC_SERVER_HANDLED.labels(
                self.service, self.method, code.name
            )
        counter.inc()
        self.seconds.observe(time.perf_counter() - started)
        # The instrumentation's span, when this call is traced.
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code is not grpc.StatusCode.OK:
                span.set_status(Status(StatusCode.ERROR, code.name))

    def unary(self, behavior: Behavior) -> Behavior:
        async def observed(request: Any, context: Any) -> Any:
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                try:
                    return await _settle(behavior(request, context))
                except grpc.aio.AbortError:
                    raise
                except Exception as unexpected:
                    await _abort_internal(context, self.full_method, unexpected)
                    raise
            except BaseException as failure:
                error = failure
                raise
            finally:
                self.finish(started, context, error)

        return observed

    def streaming(self, behavior: Behavior) -> Behavior:
        async def observed(request: Any, context: Any) -> AsyncIterator[Any]:
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                try:
                    async for response in _responses(behavior(request, context)):
                        yield response
                except grpc.aio.AbortError:
                    raise
                except Exception as unexpected:
                    await _abort_internal(context, self.full_method, unexpected)
                    raise
            except BaseException as failure:
                error = failure
                raise
            finally:
                self.finish(started, context, error)

        return observed


class ObservedInterceptor(grpc.aio.ServerInterceptor):
    """Counts and guards every RPC; health checks pass untouched."""

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        full_method = handler_call_details.method
        wrapped = self._wrapped.get(full_method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None or split_method(full_method)[0] == HEALTH_SERVICE:
            return handler
        observed = _Observed(full_method)
        wrapped = self._wrapped[full_method] = _rewrap(handler, observed.unary, observed.streaming)
        return wrapped


def _traced_calls(untraced_roots: Collection[str] = ()) -> Callable[[Any], bool]:
    """The instrumentation's filter: every call but health checks, and calls to
    ``untraced_roots`` only when the caller sent a trace to join."""
    roots = frozenset(untraced_roots)

    def traced(details: Any) -> bool:
        full_method: str = details.method
        if split_method(full_method)[0] == HEALTH_SERVICE:
            return False
        if full_method in roots:
            return any(key == "traceparent" for key, _ in details.invocation_metadata or ())
        return True

    return traced


def default_server_interceptors(
    tracer_provider: trace.TracerProvider | None = None,
    *,
    untraced_roots: Collection[str] = (),
) -> list[grpc.aio.ServerInterceptor]:
    """Tracing (outermost, so the span is current for logs and errors), then metrics
    and errors in one layer.

    `untraced_roots`: full method names (``/pkg.Service/Method``) of hot read paths
    that only join a trace the caller propagates and never start one."""
    tracing: grpc.aio.ServerInterceptor = aio_server_interceptor(  # type: ignore[no-untyped-call]
        tracer_provider=tracer_provider, filter_=_traced_calls(untraced_roots)
    )
    return [tracing, ObservedInterceptor()]
