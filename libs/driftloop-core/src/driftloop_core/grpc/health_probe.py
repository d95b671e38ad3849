"""A container health check: exit 0 when a gRPC server reports SERVING.

Docker's HEALTHCHECK runs a command, and the images carry no grpc_health_probe
binary, so `python -m driftloop_core.grpc.health_probe HOST:PORT [SERVICE]` asks
the standard grpc.health.v1 service instead. Kubernetes uses its native gRPC probe.
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def probe(target: str, service: str = "", timeout_s: float = 2.0) -> bool:
    """Whether ``service`` ("" for the whole server) at ``target`` is SERVING."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2:
        print("usage: python -m driftloop_core.grpc.health_probe HOST:PORT [SERVICE]")
        return 2
    target, service = argv[0], argv[1] if len(argv) == 2 else ""
    return 0 if probe(target, service) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
