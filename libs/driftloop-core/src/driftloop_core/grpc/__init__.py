"""gRPC plumbing shared by every Driftloop service: one way to serve, one way to call.

Servers get health, reflection, tracing, metrics, error mapping, size and
concurrency limits, (when configured) mutual TLS and a graceful stop from
:func:`build_server`; clients get the same message limits, trace propagation
and (when configured) mutual TLS from :func:`open_channel`.
"""

from driftloop_core.grpc.client import insecure_channel, open_channel, open_sync_channel
from driftloop_core.grpc.interceptors import (
    ObservedInterceptor,
    default_server_interceptors,
)
from driftloop_core.grpc.server import GrpcServer, ServicerRegistration, build_server

__all__ = [
    "GrpcServer",
    "ObservedInterceptor",
    "ServicerRegistration",
    "build_server",
    "default_server_interceptors",
    "insecure_channel",
    "open_channel",
    "open_sync_channel",
]
