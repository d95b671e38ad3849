"""The SQL store on a real SQLite file and a real PostgreSQL server (the `store`
fixture runs each test on both): versions, idempotency, alias moves."""

from __future__ import annotations

import pytest
from driftloop.v1 import common_pb2, events_pb2
from driftloop_registry.domain import (
    GatePolicy,
    Kind,
    NotFoundError,
    PreconditionError,
    Status,
)
from driftloop_registry.ports import RegistryStore
from driftloop_testing import model_trained


def trained(
    request_id: str, auc: float, champion_auc: float | None = None, champion: int | None = None
) -> events_pb2.ModelTrained:
    return model_trained(
        "payments",
        common_pb2.Artifact(uri="/a", sha256="ab" * 32, size_bytes=10),
        request_id,
        auc,
        champion_auc=champion_auc,
        champion_version=champion,
        signature=common_pb2.ModelSignature(
            inputs=[common_pb2.TensorSpec(name="x", datatype="FP32", shape=[-1, 2])]
        ),
        params={"max_depth": "3"},
        dataset=common_pb2.Dataset(uri="/d.parquet", sha256="cd" * 32, row_count=100),
    )


def test_versions_increase_and_the_gate_decides(store: RegistryStore) -> None:
    first = store.register(trained("r1", 0.80), GatePolicy())
    worse = store.register(trained("r2", 0.801, 0.80, 1), GatePolicy())
    better = store.register(trained("r3", 0.90, 0.80, 1), GatePolicy())
    assert [r.version.version for r in (first, worse, better)] == [1, 2, 3]
    assert first.change is not None and first.change.from_version is None
    assert worse.change is None
    assert store.get("payments", 2).status == Status.CANDIDATE
    assert "not promoted" in store.get("payments", 2).status_reason
    assert better.change is not None and better.change.from_version == 1
    assert store.champion("payments").version == 3
    assert store.get("payments", 1).status == Status.ARCHIVED
    row = store.get("payments", 3)
    assert row.signature["inputs"][0]["name"] == "x"
    assert row.dataset_digest == "cd" * 32 and row.params == {"max_depth": "3"}
    assert row.parent_version == 1


def test_same_request_registers_once(store: RegistryStore) -> None:
    store.register(trained("r1", 0.8), GatePolicy())
    again = store.register(trained("r1", 0.8), GatePolicy())
    assert not again.created
    assert len(store.list_versions("payments")) == 1


def test_rollback_and_errors(store: RegistryStore) -> None:
    with pytest.raises(NotFoundError, match="model payments has no versions"):
        store.champion("payments")
    store.register(trained("r1", 0.8), GatePolicy())
    with pytest.raises(PreconditionError, match="no previous champion"):
        store.rollback("payments", actor="ops", reason="bad")
    store.register(trained("r2", 0.7), GatePolicy())
    with pytest.raises(NotFoundError, match="model payments has no version 7"):
        store.promote("payments", 7, actor="ops", reason="x")
    change, row = store.promote("payments", 2, actor="ops", reason="manual")
    assert (change.from_version, change.to_version, row.version) == (1, 2, 2)
    change, row = store.rollback("payments", actor="ops", reason="regression")
    assert change.kind is Kind.ROLLBACK and row.version == 1
    assert [(c.kind, c.to_version) for c in store.history("payments")] == [
        (Kind.PROMOTE, 1),
        (Kind.PROMOTE, 2),
        (Kind.ROLLBACK, 1),
    ]
    models = store.list_models()
    assert [(m.model, m.latest_version, m.champion_version) for m in models] == [("payments", 2, 1)]


def test_unpublished_events_stay_until_marked(store: RegistryStore) -> None:
    registration = store.register(trained("r1", 0.8), GatePolicy())
    versions, changes = store.unpublished()
    assert [v.version for v in versions] == [1] and len(changes) == 1
    store.mark_registered("payments", 1)
    assert registration.change is not None
    store.mark_promoted(registration.change.promotion_id)
    assert store.unpublished() == ([], [])
