"""What the registry's use cases need from the outside, as small interfaces.

The service plugs in the SQL store (`adapters.store`), the core `Publisher` and
the core `ArtifactStore`; tests hand fakes. Every store method takes and returns
domain records: no ORM row leaves the adapter, so a row's lazy attributes or
its session never reach the handlers or gRPC.
"""

from __future__ import annotations

from typing import Protocol

from driftloop.v1 import common_pb2, events_pb2
from driftloop_core.artifacts import ArtifactStream
from google.protobuf.message import Message

from driftloop_registry.domain import (
    CHAMPION,
    AliasChange,
    GatePolicy,
    ModelStats,
    ModelVersion,
    Registration,
    Rollout,
    RolloutEnd,
    RolloutPolicy,
)


class RegistryStore(Protocol):
    """Model versions and alias history; synchronous (callers on an event loop
    run it in a thread). Every state change commits in one transaction, with the
    events it implies kept as unpublished until marked."""

    def find_by_request(self, model: str, request_id: str) -> ModelVersion | None: ...

    def get(self, model: str, version: int) -> ModelVersion:
        """Raises `NotFoundError` when the model has no such version."""
        ...

    def champion(self, model: str) -> ModelVersion:
        """Raises `NotFoundError` when the model is unknown or has no champion."""
        ...

    def list_versions(self, model: str = "") -> list[ModelVersion]: ...

    def list_models(self) -> list[ModelStats]: ...

    def history(self, model: str, alias: str = CHAMPION) -> list[AliasChange]: ...

    def rollouts(self, model: str = "") -> list[Rollout]: ...

    def register(
        self,
        trained: events_pb2.ModelTrained,
        policy: GatePolicy,
        rollout: RolloutPolicy | None = None,
    ) -> Registration:
        """The next version, once per (model, request id), with the gate's
        decision; with `rollout`, an admitted candidate starts a rollout."""
        ...

    def judge(
        self, rollout_id: str, *, promote: bool, reason: str, figures: dict[str, float]
    ) -> RolloutEnd | None:
        """End an open rollout on its verdict; None when unknown or already ended."""
        ...

    def promote(
        self, model: str, version: int, *, actor: str, reason: str
    ) -> tuple[AliasChange, ModelVersion]: ...

    def rollback(
        self, model: str, *, actor: str, reason: str
    ) -> tuple[AliasChange, ModelVersion]: ...

    def unpublished(self) -> tuple[list[ModelVersion], list[AliasChange]]:
        """Events committed but not yet acknowledged by the broker, oldest first."""
        ...

    def mark_registered(self, model: str, version: int) -> None: ...

    def mark_promoted(self, promotion_id: str) -> None: ...

    def unpublished_rollouts(self) -> tuple[list[Rollout], list[Rollout]]: ...

    def mark_rollout(
        self, rollout_id: str, *, started: bool = False, ended: bool = False
    ) -> None: ...


class EventPublisher(Protocol):
    async def publish_event(
        self, message: Message, *, key: str | bytes | None, event_id: str | None = None
    ) -> object: ...


class ArtifactReader(Protocol):
    def get(self, artifact: common_pb2.Artifact) -> bytes:
        """The artifact's bytes, whole and verified (bounded by the store's limit)."""
        ...

    def open(self, sha256: str) -> ArtifactStream:
        """A stream of the bytes under `sha256`, verified as it is read."""
        ...
