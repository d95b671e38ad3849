"""A container health check: exit 0 when a gRPC server reports SERVING.

Docker's HEALTHCHECK runs a command, and the images carry no grpc_health_probe
binary, so `python -m driftloop_core.grpc.health_probe HOST:PORT [SERVICE]` asks
the standard grpc.health.v1 service instead. Kubernetes uses its native gRPC
probe in plaintext overlays and this module as an exec probe under mutual TLS
(k8s/components/mtls).

The probe reads the same `DRIFTLOOP_GRPC__TLS_*` variables as the service it
checks, so with mutual TLS it presents the service's own certificate; set
`DRIFTLOOP_GRPC__TLS_SERVER_NAME` when that certificate does not name 127.0.0.1.
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from driftloop_core.grpc.client import open_sync_channel
from driftloop_core.grpc.tls import TlsConfigError
from driftloop_core.settings import Settings, load_settings


def probe(
    target: str, service: str = "", timeout_s: float = 2.0, settings: Settings | None = None
) -> bool:
    """Whether ``service`` ("" for the whole server) at ``target`` is SERVING.

    ``settings`` (default: read from the environment) say whether to use TLS.
    """
    settings = settings or load_settings()
    with open_sync_channel(target, settings) as channel:
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
    try:
        return 0 if probe(target, service) else 1
    except TlsConfigError as error:
        print(f"health_probe: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
