"""gRPC plumbing shared by every Driftloop service: one way to serve, one way to call.

Servers get health, reflection, tracing, metrics, error mapping, size and
concurrency limits and a graceful stop from :func:`build_server`; clients get the
same message limits and trace propagation from :func:`insecure_channel`.
"""

from driftloop_core.grpc.client import insecure_channel
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
]
