"""The registry's use cases with a fake publisher: artifact checks and the outbox."""

from __future__ import annotations

from pathlib import Path

import pytest
from driftloop.v1 import common_pb2, events_pb2
from driftloop_core.artifacts import ArtifactDigestError
from driftloop_registry.adapters.schema import open_engine
from driftloop_registry.adapters.store import SqlRegistryStore
from driftloop_registry.domain import GatePolicy
from driftloop_registry.handlers import InvalidArtifactError, Registry
from fakes import FakeArtifacts, FlakyPublisher, onnx_like


def registry(tmp_path: Path, publisher: FlakyPublisher) -> tuple[Registry, FakeArtifacts]:
    artifacts = FakeArtifacts()
    store = SqlRegistryStore(open_engine(f"sqlite:///{tmp_path / 'registry.db'}"))
    return Registry(store, artifacts, publisher, GatePolicy()), artifacts


def trained(artifact: common_pb2.Artifact, request_id: str = "r1") -> events_pb2.ModelTrained:
    return events_pb2.ModelTrained(
        request_id=request_id, model="payments", artifact=artifact, metrics={"roc_auc": 0.8}
    )


async def test_events_left_unpublished_by_a_failure_go_out_once_with_their_ids(
    tmp_path: Path,
) -> None:
    publisher = FlakyPublisher(failures=1)
    reg, artifacts = registry(tmp_path, publisher)
    message = trained(artifacts.put(onnx_like()))
    with pytest.raises(ConnectionError):
        await reg.register_trained(message)
    assert publisher.sent == []
    # The consumer retries the same record: nothing new is registered, and the
    # committed events are published now.
    again = await reg.register_trained(message)
    assert not again.created
    assert [name for name, _, _ in publisher.sent] == ["ModelRegistered", "ModelPromoted"]
    registered_id = publisher.sent[0][1]
    promoted = publisher.sent[1][2]
    assert isinstance(promoted, events_pb2.ModelPromoted)
    assert publisher.sent[1][1] == promoted.promotion_id
    # A further replay publishes nothing.
    await reg.register_trained(message)
    assert len(publisher.sent) == 2
    assert registered_id


async def test_refuses_bad_artifacts_and_registers_nothing(tmp_path: Path) -> None:
    publisher = FlakyPublisher()
    reg, artifacts = registry(tmp_path, publisher)
    artifact = artifacts.put(onnx_like())
    artifacts.blobs[artifact.sha256] = b"tampered"
    with pytest.raises(ArtifactDigestError):
        await reg.register_trained(trained(artifact))
    not_onnx = artifacts.put(b"\xff\xff\xff garbage")
    with pytest.raises(InvalidArtifactError, match="not an ONNX model"):
        await reg.register_trained(trained(not_onnx, "r2"))
    wrong_size = artifacts.put(onnx_like() + b"")
    wrong_size.size_bytes = 99
    with pytest.raises(InvalidArtifactError, match="the event says 99"):
        await reg.register_trained(trained(wrong_size, "r3"))
    assert await reg.list_versions() == []
    assert publisher.sent == []
