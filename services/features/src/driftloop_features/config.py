"""The feature store's own knobs, read from `DRIFTLOOP_FEATURES_*` variables.

They sit beside the shared `Settings` (endpoints, Kafka, gRPC limits). Several
workers form one feature store: they share a consumer group, so each owns some
partitions of `events.valid` and of the entity table, and every worker answers
a lookup for any entity by asking the owner of its partition (see
`driftloop_features.routing`). `driftloop up --scale features=N` sets `worker`
and `reuse_port` for each process; in Kubernetes every pod is its own worker
and names its address with `route_host` (the pod IP).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class FeaturesSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_FEATURES_", extra="ignore")

    # This process's place among the workers on one machine (0 alone): it keeps
    # its own table store under DRIFTLOOP_HOME/ephemeral, and only worker 0
    # serves /metrics on the shared port.
    worker: int = Field(default=0, ge=0)
    # Let several workers on one machine share the lookup port (SO_REUSEPORT):
    # the kernel spreads callers' connections over them.
    reuse_port: bool = False
    # Where the other workers reach this one for the entities it owns: a host
    # they can dial (the pod IP in Kubernetes) and a port (0: the lookup port
    # when it is not shared, else any free one).
    route_host: str = "127.0.0.1"
    route_port: int = Field(default=0, ge=0, le=65535)
    # How long a lookup forwarded to the owning worker may take.
    route_timeout_s: float = Field(default=2.0, gt=0)

    @property
    def own_route_port(self) -> bool:
        """Whether this worker needs a port of its own to be reached by the
        others: when it shares the lookup port, or when one is set."""
        return self.reuse_port or self.route_port != 0

    @property
    def route_address(self) -> str:
        return f"{self.route_host}:{self.route_port}"


def load_features_settings(**overrides: Any) -> FeaturesSettings:
    """Read the environment once; keyword overrides win (tests)."""
    return FeaturesSettings(**overrides)
