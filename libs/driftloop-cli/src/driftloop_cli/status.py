"""`driftloop status`: is everything that `driftloop up` started ready?

The broker is ready when it answers a metadata request; a service when its
gRPC health check says SERVING. Nothing is trusted from the state file but
where to look.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass

import grpc
from driftloop_core.broker import broker_ready
from driftloop_core.grpc.client import open_channel
from driftloop_core.settings import Settings
from grpc_health.v1 import health_pb2, health_pb2_grpc

from driftloop_cli.supervisor import pid_alive, read_state


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: int | None
    endpoint: str
    ready: bool
    metrics: str | None = None  # the Prometheus /metrics URL, for services


async def grpc_serving(endpoint: str, settings: Settings, timeout_s: float = 1.0) -> bool:
    """Whether the server at ``endpoint`` reports SERVING, asked over TLS when the
    settings configure it."""
    async with open_channel(endpoint, settings) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def collect(settings: Settings) -> list[ServiceStatus]:
    state = read_state(settings)
    if state is None or not pid_alive(state.get("supervisor_pid")):
        return [ServiceStatus("broker", None, settings.kafka.bootstrap_servers, False)]
    entries = state.get("services", [])

    async def probe(entry: dict[str, object]) -> ServiceStatus:
        pid = entry.get("pid")
        pid = pid if isinstance(pid, int) else None
        endpoint = str(entry["endpoint"])
        if entry.get("kind") == "kafka":
            ready = await broker_ready(endpoint, timeout_s=2.0, kafka=settings.kafka)
        else:
            ready = pid_alive(pid) and await grpc_serving(endpoint, settings)
        name = str(entry["name"])
        port = settings.metrics_port_for(name) if entry.get("kind") != "kafka" else 0
        metrics = f"http://127.0.0.1:{port}/metrics" if port else None
        return ServiceStatus(name, pid, endpoint, ready, metrics)

    return list(await asyncio.gather(*(probe(entry) for entry in entries)))


def as_json(statuses: list[ServiceStatus]) -> dict[str, object]:
    return {"services": [asdict(status) for status in statuses]}
