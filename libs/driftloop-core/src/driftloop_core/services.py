"""The registry of services that `driftloop up` runs.

A service package announces itself with an entry point in the group
`driftloop.services` pointing at a `ServiceSpec`; the supervisor starts every
one it finds, so a service that is not installed is simply absent.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points

import structlog

from driftloop_core.settings import Settings

log = structlog.get_logger(__name__)

ENTRY_POINT_GROUP = "driftloop.services"


@dataclass(frozen=True)
class ServiceSpec:
    """How to run one service and where it answers gRPC health checks."""

    name: str
    module: str  # run as `python -m <module>`
    endpoint_key: str = ""  # field of Settings.endpoints; defaults to the name
    order: int = 100  # start order; lower starts first
    env: dict[str, str] = field(default_factory=dict)
    # The service keeps state derived from the broker's topics (a table store, a
    # saved position, the ids it published): when the embedded broker restarts
    # empty, `driftloop up` stops it first and starts it again on the new broker.
    restart_with_broker: bool = False
    # The prefix of the settings by which several processes of the service
    # share its work on one machine (`<prefix>WORKER`, `<prefix>REUSE_PORT`);
    # empty: the service runs as one process.
    scale_env_prefix: str = ""

    def endpoint(self, settings: Settings) -> str:
        address: str = getattr(settings.endpoints, self.endpoint_key or self.name)
        return address

    def scaled(self, count: int) -> list[ServiceSpec]:
        """`count` processes of this service sharing its port: `name`, `name-2`, ...
        Raises ValueError when the service runs as one process."""
        if count < 1:
            raise ValueError(f"{self.name}={count}: at least 1 process")
        if count > 1 and not self.scale_env_prefix:
            raise ValueError(f"{self.name} runs as one process")
        if count == 1:
            return [self]
        prefix = self.scale_env_prefix
        return [
            replace(
                self,
                name=self.name if index == 0 else f"{self.name}-{index + 1}",
                endpoint_key=self.endpoint_key or self.name,
                env={**self.env, f"{prefix}WORKER": str(index), f"{prefix}REUSE_PORT": "1"},
            )
            for index in range(count)
        ]


def discover_services() -> list[ServiceSpec]:
    specs: list[ServiceSpec] = []
    for point in entry_points(group=ENTRY_POINT_GROUP):
        spec = point.load()
        if not isinstance(spec, ServiceSpec):
            log.warning("service_entry_point_ignored", entry_point=point.value)
            continue
        specs.append(spec)
    return sorted(specs, key=lambda spec: (spec.order, spec.name))
