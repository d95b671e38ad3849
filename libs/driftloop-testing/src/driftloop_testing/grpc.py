"""The standard gRPC health check, as a probe that never raises, and a channel
that sends a role's bearer token."""

from __future__ import annotations

import grpc
from driftloop_core.grpc.auth import bearer_metadata
from grpc_health.v1 import health_pb2, health_pb2_grpc

NOT_ANSWERING = -1


async def health(endpoint: str, service: str = "", timeout_s: float = 1.0) -> int:
    """The serving status of `service` at `endpoint`, or -1 when nothing answers."""
    async with grpc.aio.insecure_channel(endpoint) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.aio.AioRpcError:
            return NOT_ANSWERING
        return int(reply.status)


class _Bearer:
    def __init__(self, token: str) -> None:
        self._metadata = bearer_metadata(token)

    def details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            grpc.aio.Metadata(*(details.metadata or ()), *self._metadata),
            details.credentials,
            details.wait_for_ready,
        )


# grpc.aio files an interceptor under the first call shape it implements.
class _UnaryUnaryBearer(_Bearer, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(self.details(details), request)


class _UnaryStreamBearer(_Bearer, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(self.details(details), request)


def token_channel(endpoint: str, token: str) -> grpc.aio.Channel:
    """A plaintext channel whose unary and server-streaming calls carry ``token``."""
    return grpc.aio.insecure_channel(
        endpoint, interceptors=[_UnaryUnaryBearer(token), _UnaryStreamBearer(token)]
    )
