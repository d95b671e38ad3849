"""The standard gRPC health check, as a probe that never raises."""

from __future__ import annotations

import grpc
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
