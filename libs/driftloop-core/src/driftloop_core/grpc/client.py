"""Channels from one Driftloop process to another's gRPC services.

A channel made here accepts the same message sizes the servers do and injects the
caller's trace into ``traceparent`` metadata and sends this process's token for
the role each method needs (``driftloop_core.grpc.auth``), so a CLI command or a service calling
another one shows up as one trace. Health checks are not traced, as on the server.

:func:`open_channel` is the one every caller uses: it speaks TLS, presenting this
process's certificate, when the ``grpc`` settings configure it, and plaintext
otherwise. :func:`insecure_channel` is plaintext whatever the settings say, for
tests and tools that talk to a plaintext server on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.instrumentation.grpc.filters import negate, service_name

from driftloop_core.grpc.auth import client_interceptors
from driftloop_core.grpc.interceptors import HEALTH_SERVICE
from driftloop_core.grpc.tls import channel_credentials
from driftloop_core.settings import Settings

__all__ = ["channel_options", "insecure_channel", "open_channel", "open_sync_channel"]


def channel_options(settings: Settings, server_name: str | None = None) -> list[tuple[str, Any]]:
    """Message size limits matching the servers', and the name a TLS server's
    certificate is checked against when the settings override it (else
    `server_name`, for a server dialled by address)."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", settings.grpc.max_message_bytes),
        ("grpc.max_receive_message_length", settings.grpc.max_message_bytes),
    ]
    name = settings.grpc.tls_server_name or server_name
    if settings.grpc.tls and name:
        options.append(("grpc.ssl_target_name_override", name))
    return options


def _tracing(
    tracer_provider: trace.TracerProvider | None,
) -> list[grpc.aio.ClientInterceptor]:
    interceptors: list[grpc.aio.ClientInterceptor] = aio_client_interceptors(  # type: ignore[no-untyped-call]
        tracer_provider=tracer_provider,
        filter_=negate(service_name(HEALTH_SERVICE)),
    )
    return interceptors


def open_channel(
    target: str,
    settings: Settings,
    *,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    tracer_provider: trace.TracerProvider | None = None,
    server_name: str | None = None,
) -> grpc.aio.Channel:
    """A ``grpc.aio`` channel to ``target`` (``host:port``) that traces calls: TLS
    (mutual when this process has a certificate) when the settings turn it on,
    plaintext otherwise. ``server_name``: the name the server's certificate
    holds, when ``target`` is an address (a pod's IP) rather than that name.

    Use it as ``async with open_channel(...) as channel:`` so it is closed. Raises
    ``TlsConfigError`` when a configured certificate file cannot be read.
    """
    credentials = channel_credentials(settings.grpc)
    if credentials is None:
        return insecure_channel(
            target, settings, interceptors=interceptors, tracer_provider=tracer_provider
        )
    channel: grpc.aio.Channel = grpc.aio.secure_channel(
        target,
        credentials,
        options=channel_options(settings, server_name),
        interceptors=[
            *_tracing(tracer_provider),
            *client_interceptors(settings),
            *interceptors,
        ],
    )
    return channel


def open_sync_channel(target: str, settings: Settings) -> grpc.Channel:
    """A blocking, untraced channel with the same security as :func:`open_channel`,
    for tools outside an event loop (the container health probe)."""
    credentials = channel_credentials(settings.grpc)
    if credentials is None:
        return grpc.insecure_channel(target, options=channel_options(settings))
    return grpc.secure_channel(target, credentials, options=channel_options(settings))


def insecure_channel(
    target: str,
    settings: Settings,
    *,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    tracer_provider: trace.TracerProvider | None = None,
) -> grpc.aio.Channel:
    """A plaintext ``grpc.aio`` channel to ``target`` (``host:port``) that traces
    calls, whatever the TLS settings say; services and the CLI use
    :func:`open_channel` instead.

    Use it as ``async with insecure_channel(...) as channel:`` so it is closed.
    """
    channel: grpc.aio.Channel = grpc.aio.insecure_channel(
        target,
        options=channel_options(settings),
        interceptors=[*_tracing(tracer_provider), *client_interceptors(settings), *interceptors],
    )
    return channel
