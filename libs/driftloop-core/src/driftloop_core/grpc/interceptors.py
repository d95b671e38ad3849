"""Server interceptors every Driftloop gRPC service runs behind.

They sit in this order, outermost first:

1. tracing: the OpenTelemetry aio interceptor; it continues the caller's trace
   from ``traceparent`` metadata and skips ``grpc.health.v1.Health``, whose probes
   would otherwise bury the spans that matter;
2. metrics: ``driftloop_grpc_server_handled_total`` and
   ``driftloop_grpc_server_handling_seconds`` by service, method and final code;
3. errors: an exception a handler did not mean to raise becomes ``INTERNAL`` with a
   short message, logged once with its traceback; a deliberate
   ``context.abort(...)`` passes through untouched.

Handlers may be coroutines, async generators, or coroutines that stream with
``context.write`` (the health ``Watch`` does); streaming ones are always handed on
as async generators, the one style the OpenTelemetry interceptor can wrap.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.instrumentation.grpc.filters import negate, service_name
from prometheus_client import Counter, Histogram

from driftloop_core.logging import get_logger

__all__ = [
    "GRPC_SERVER_HANDLED",
    "GRPC_SERVER_HANDLING_SECONDS",
    "HEALTH_SERVICE",
    "ErrorInterceptor",
    "MetricsInterceptor",
    "default_server_interceptors",
    "split_method",
    "tracing_interceptor",
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


def tracing_interceptor(
    tracer_provider: trace.TracerProvider | None = None,
) -> grpc.aio.ServerInterceptor:
    """Server spans for every RPC except health checks, parented by ``traceparent``."""
    interceptor: grpc.aio.ServerInterceptor = aio_server_interceptor(  # type: ignore[no-untyped-call]
        tracer_provider=tracer_provider,
        filter_=negate(service_name(HEALTH_SERVICE)),
    )
    return interceptor


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


# --------------------------------------------------------------------------- metrics


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


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Count and time every RPC by service, method and final status code."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        service, method = split_method(handler_call_details.method)

        def record(started: float, context: Any, error: BaseException | None) -> None:
            code = _final_code(context, error)
            GRPC_SERVER_HANDLED.labels(service, method, code.name).inc()
            GRPC_SERVER_HANDLING_SECONDS.labels(service, method).observe(
                time.perf_counter() - started
            )

        def unary(behavior: Behavior) -> Behavior:
            async def observed(request: Any, context: Any) -> Any:
                started = time.perf_counter()
                try:
                    response = await _settle(behavior(request, context))
                except BaseException as error:
                    record(started, context, error)
                    raise
                record(started, context, None)
                return response

            return observed

        def streaming(behavior: Behavior) -> Behavior:
            async def observed(request: Any, context: Any) -> AsyncIterator[Any]:
                started = time.perf_counter()
                try:
                    async for response in _responses(behavior(request, context)):
                        yield response
                except BaseException as error:
                    record(started, context, error)
                    raise
                record(started, context, None)

            return observed

        return _rewrap(handler, unary, streaming)


# --------------------------------------------------------------------------- errors


async def _abort_internal(context: Any, full_method: str, error: Exception) -> None:
    """Log ``error`` with its traceback and answer INTERNAL; raises AbortError."""
    service, method = split_method(full_method)
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


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turn an unexpected handler exception into ``INTERNAL``, logged once.

    Catching every ``Exception`` is this interceptor's whole job; it does not carry
    on, it ends the RPC with a status instead of grpc's bare ``UNKNOWN``.
    """

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        full_method = handler_call_details.method

        def unary(behavior: Behavior) -> Behavior:
            async def guarded(request: Any, context: Any) -> Any:
                try:
                    return await _settle(behavior(request, context))
                except grpc.aio.AbortError:
                    raise
                except Exception as error:
                    await _abort_internal(context, full_method, error)
                    raise

            return guarded

        def streaming(behavior: Behavior) -> Behavior:
            async def guarded(request: Any, context: Any) -> AsyncIterator[Any]:
                try:
                    async for response in _responses(behavior(request, context)):
                        yield response
                except grpc.aio.AbortError:
                    raise
                except Exception as error:
                    await _abort_internal(context, full_method, error)
                    raise

            return guarded

        return _rewrap(handler, unary, streaming)


def default_server_interceptors(
    tracer_provider: trace.TracerProvider | None = None,
) -> list[grpc.aio.ServerInterceptor]:
    """Tracing, metrics and errors, in the order they must run."""
    return [tracing_interceptor(tracer_provider), MetricsInterceptor(), ErrorInterceptor()]
