"""The SQL store under concurrent writers, on SQLite and on PostgreSQL.

The registry service runs store calls in threads (the `models.trained` consumer
and gRPC Promote/Rollback at once), and in production several replicas may share
one PostgreSQL database; version numbers and the champion alias must stay
consistent however their transactions interleave.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from itertools import pairwise
from typing import TypeVar

from driftloop.v1 import common_pb2, events_pb2
from driftloop_registry.domain import GatePolicy, PreconditionError, Status
from driftloop_registry.ports import RegistryStore
from driftloop_testing import model_trained

T = TypeVar("T")
WRITERS = 8
# Interleavings differ from run to run; a few rounds make a lost race likely.
ROUNDS = 5


def trained(request_id: str, auc: float, model: str = "payments") -> events_pb2.ModelTrained:
    artifact = common_pb2.Artifact(uri="/a", sha256="ab" * 32, size_bytes=10)
    return model_trained(model, artifact, request_id, auc)


def all_at_once(calls: list[Callable[[], T]]) -> list[T]:
    """Run every call in its own thread, released together."""
    start = threading.Barrier(len(calls))

    def run(call: Callable[[], T]) -> T:
        start.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def champions(store: RegistryStore, model: str = "payments") -> list[int]:
    return [row.version for row in store.list_versions(model) if row.status == Status.CHAMPION]


def test_concurrent_registrations_get_distinct_versions_and_one_champion(
    store: RegistryStore,
) -> None:
    results = all_at_once(
        [partial(store.register, trained(f"r{i}", 0.8), GatePolicy()) for i in range(WRITERS)]
    )
    assert all(result.created for result in results)
    assert sorted(r.version.version for r in results) == list(range(1, WRITERS + 1))
    assert len(champions(store)) == 1
    promoted = [r for r in results if r.change is not None]
    assert len(promoted) == 1 and promoted[0].change is not None
    assert promoted[0].change.from_version is None


def test_a_request_replayed_concurrently_registers_once(store: RegistryStore) -> None:
    results = all_at_once(
        [lambda: store.register(trained("same", 0.8), GatePolicy()) for _ in range(WRITERS)]
    )
    assert sum(result.created for result in results) == 1
    assert {result.version.version for result in results} == {1}
    assert len(store.list_versions("payments")) == 1


def test_manual_promotions_racing_registrations_leave_one_champion(
    store: RegistryStore,
) -> None:
    def promote(model: str, version: int) -> object:
        try:
            return store.promote(model, version, actor="ops", reason="race")
        except PreconditionError as already:
            # Another promotion of the same version won; this one is refused.
            assert "is already the champion" in str(already)
            return None

    for round_ in range(ROUNDS):
        model = f"payments-{round_}"
        for i in range(3):
            store.register(trained(f"seed{i}", 0.8, model), GatePolicy())
        calls: list[Callable[[], object]] = []
        for i in range(WRITERS // 2):
            calls.append(partial(store.register, trained(f"r{i}", 0.99, model), GatePolicy()))
            calls.append(partial(promote, model, 2 + i % 2))
        all_at_once(calls)
        assert len(store.list_versions(model)) == 3 + WRITERS // 2
        (champion,) = champions(store, model)
        history = store.history(model)
        assert history[-1].to_version == champion
        # Each move starts from the champion the previous one left.
        for before, after in pairwise(history):
            assert after.from_version == before.to_version
