"""Lookups across feature-store workers: the owner of an entity's partition answers.

Workers of one feature store share a Faust consumer group, so each holds the
entity table for the partitions it was assigned, and only the owner of a
partition has its entities' state up to date. Each worker tells the group where
it answers lookups (Faust's `canonical_url`, carried in the group's assignment
metadata), so every worker knows every partition's owner. A lookup that reaches
a worker through the shared port is split by owner: this worker's entities are
answered from its memory, the others' are forwarded, one call per owner, and
the answers come back in the order asked.

While the group rebalances, or when a partition has no owner yet, a lookup is
UNAVAILABLE (retry) rather than NOT_FOUND: a caller applying defaults for
"not found" would score on them. A forwarded call is marked, and its receiver
answers only for entities it owns (UNAVAILABLE otherwise), so a call never
travels in circles while ownership moves.

An entity's partition is the one its events take on `events.valid`: ingestion
keys them by entity id with the Java client's partitioner (murmur2), and the
table writes a key to the partition of the event that changed it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import grpc
import grpc.aio
from driftloop.v1 import features_pb2, features_pb2_grpc
from driftloop_core.grpc.client import open_channel
from driftloop_core.kafka.publisher import partition_index
from driftloop_core.settings import Settings

# Marks a lookup forwarded by another worker (its value: that worker's address).
FORWARDED_BY = "driftloop-forwarded-by"
# Trailing metadata of every lookup: the worker that answered, and the owners
# it asked for the rest.
ANSWERED_BY = "driftloop-features-worker"
ROUTED_TO = "driftloop-features-routed-to"


class Unsettled(Exception):
    """No worker can answer for an entity right now (a rebalance is under way)."""


class Ownership:
    """Which worker owns each partition of the entity table, as the consumer
    group's last assignment says; `me` is this worker's lookup address."""

    def __init__(self, app: Any, changelog_topic: str, partitions: int) -> None:
        self._app = app
        self._topic = changelog_topic
        self._partitions = partitions
        self.me = ""
        self._source: object | None = None
        self._owners: dict[int, str] = {}

    def announce(self, host: str, port: int) -> None:
        """Tell the group where this worker answers (before the app starts)."""
        self.me = _join(host, port)
        self._app.conf.canonical_url = f"http://{self.me}"

    def owner(self, entity_id: str) -> str:
        """The lookup address of the worker owning `entity_id` (maybe `me`);
        raises Unsettled while the group rebalances or the partition has no owner."""
        if self._app.rebalancing:
            raise Unsettled("the feature store's workers are rebalancing their partitions")
        partition = partition_index(entity_id.encode(), self._partitions)
        owner = self._table().get(partition)
        if owner is None:
            raise Unsettled(f"partition {partition} of the entity table has no worker yet")
        return owner

    def _table(self) -> Mapping[int, str]:
        # Faust replaces the distribution object at each assignment: rebuild then.
        distribution = self._app.assignor.changelog_distribution
        if distribution is not self._source:
            owners: dict[int, str] = {}
            for url, topics in distribution.items():
                address = _address(url)
                for partition in topics.get(self._topic, ()):
                    owners[partition] = address
            self._owners, self._source = owners, distribution
        return self._owners


def _address(url: str) -> str:
    parts = urlsplit(str(url))
    return _join(parts.hostname or "", parts.port or 80)


def _join(host: str, port: int) -> str:
    """`host:port` as gRPC dials it (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Forwarder:
    """Calls to other workers' lookup addresses, one channel each, kept open."""

    def __init__(self, settings: Settings, me: Ownership, timeout_s: float) -> None:
        self._settings = settings
        self._me = me
        self._timeout_s = timeout_s
        self._stubs: dict[str, features_pb2_grpc.FeatureServiceAsyncStub] = {}
        self._channels: list[grpc.aio.Channel] = []

    async def lookup(
        self,
        target: str,
        request: features_pb2.GetOnlineFeaturesRequest,
        timeout_s: float | None,
    ) -> features_pb2.GetOnlineFeaturesResponse:
        """Ask `target` for what it owns; raises grpc.aio.AioRpcError."""
        stub = self._stubs.get(target)
        if stub is None:
            # Workers are dialled by address; their certificates name the service.
            channel = open_channel(target, self._settings, server_name="features")
            self._channels.append(channel)
            stub = self._stubs[target] = features_pb2_grpc.FeatureServiceStub(channel)
        timeout = self._timeout_s if timeout_s is None else min(timeout_s, self._timeout_s)
        reply: features_pb2.GetOnlineFeaturesResponse = await stub.GetOnlineFeatures(
            request, timeout=timeout, metadata=((FORWARDED_BY, self._me.me),)
        )
        return reply

    async def close(self) -> None:
        await asyncio.gather(*(channel.close() for channel in self._channels))
        self._channels.clear()
        self._stubs.clear()


@dataclass(frozen=True)
class Routes:
    """Who owns what, and the calls to the other owners."""

    ownership: Ownership
    forwarder: Forwarder


def split_by_owner(
    ownership: Ownership, entity_ids: Sequence[str]
) -> tuple[list[str], dict[str, list[str]]]:
    """The entities this worker owns, and the others by owner (raises Unsettled)."""
    mine: list[str] = []
    others: dict[str, list[str]] = {}
    for entity_id in entity_ids:
        owner = ownership.owner(entity_id)
        if owner == ownership.me:
            mine.append(entity_id)
        else:
            others.setdefault(owner, []).append(entity_id)
    return mine, others
