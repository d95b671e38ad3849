"""What the drift application needs from the outside, as small interfaces.

The service plugs in the registry's gRPC client and the core Kafka publisher;
tests may hand in their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from driftloop.v1 import common_pb2


class RegistryUnavailable(Exception):
    """The registry did not answer."""


@dataclass(frozen=True)
class ChampionReference:
    version: int
    reference: dict[str, common_pb2.ReferenceDistribution]


class References(Protocol):
    async def lookup(self, model: str, version: int | None = None) -> ChampionReference | None:
        """That version (the champion when None) with its reference; None when absent.

        Raises `RegistryUnavailable` when the registry cannot be reached."""
        ...


class EventPublisher(Protocol):
    async def publish(
        self,
        topic: str,
        value: bytes,
        *,
        key: str | bytes | None,
        ce_type: str,
        event_id: str | None = None,
    ) -> object:
        """Send one record and wait for the broker's acknowledgement."""
        ...
