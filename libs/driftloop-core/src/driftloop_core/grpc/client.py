"""Channels from one Driftloop process to another's gRPC services.

A channel made here accepts the same message sizes the servers do and injects the
caller's trace into ``traceparent`` metadata, so a CLI command or a service calling
another one shows up as one trace. Health checks are not traced, as on the server.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.instrumentation.grpc.filters import negate, service_name

from driftloop_core.grpc.interceptors import HEALTH_SERVICE
from driftloop_core.settings import Settings

__all__ = ["channel_options", "insecure_channel"]


def channel_options(settings: Settings) -> list[tuple[str, Any]]:
    """Message size limits matching the servers'."""
    return [
        ("grpc.max_send_message_length", settings.grpc.max_message_bytes),
        ("grpc.max_receive_message_length", settings.grpc.max_message_bytes),
    ]


def insecure_channel(
    target: str,
    settings: Settings,
    *,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    tracer_provider: trace.TracerProvider | None = None,
) -> grpc.aio.Channel:
    """A plaintext ``grpc.aio`` channel to ``target`` (``host:port``) that traces calls.

    Use it as ``async with insecure_channel(...) as channel:`` so it is closed.
    """
    tracing: list[grpc.aio.ClientInterceptor] = aio_client_interceptors(  # type: ignore[no-untyped-call]
        tracer_provider=tracer_provider,
        filter_=negate(service_name(HEALTH_SERVICE)),
    )
    channel: grpc.aio.Channel = grpc.aio.insecure_channel(
        target,
        options=channel_options(settings),
        interceptors=[*tracing, *interceptors],
    )
    return channel
