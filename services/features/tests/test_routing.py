"""Lookups across two workers over real gRPC: each entity is answered by the
worker owning its partition, in the order asked, whichever worker was called;
while ownership is unsettled the answer is UNAVAILABLE, never "not found".

Faust's group assignment is stood in for by the map it hands each worker (its
`changelog_distribution`); the table states are plain entity states."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
import pytest
from driftloop.v1 import features_pb2, features_pb2_grpc
from driftloop_core.feature_math import EntityState, FeatureMath
from driftloop_core.featureset import default_featureset_path, load_featureset
from driftloop_core.grpc.server import GrpcServer, build_server
from driftloop_core.kafka.publisher import partition_index
from driftloop_core.settings import Settings
from driftloop_features.entrypoints.grpc import FeatureServicer
from driftloop_features.routing import ANSWERED_BY, ROUTED_TO, Forwarder, Ownership, Routes

FS = load_featureset(default_featureset_path())
PARTITIONS = 4
TOPIC = "driftloop-features-entities-changelog"
ENTITIES = [f"cust-{i}" for i in range(16)]


@dataclass
class FakeAssignor:
    changelog_distribution: dict[str, dict[str, list[int]]] = field(default_factory=dict)


@dataclass
class FakeConf:
    canonical_url: str = ""


@dataclass
class FakeApp:
    """What Ownership reads of a Faust app."""

    assignor: FakeAssignor = field(default_factory=FakeAssignor)
    conf: FakeConf = field(default_factory=FakeConf)
    rebalancing: bool = False


@dataclass
class Worker:
    app: FakeApp
    server: GrpcServer
    ownership: Ownership
    states: dict[str, EntityState]

    @property
    def route(self) -> str:
        return self.ownership.me


def counted(math: FeatureMath, events: int) -> EntityState:
    """A state holding `events` events of the last minute."""
    now_ms = int(time.time() * 1000)
    state = EntityState.from_json(None)
    for i in range(events):
        math.apply(state, f"e{i}", now_ms - 60_000 + i, {"amount": 10.0 * (i + 1)}, now_ms=now_ms)
    return state


async def start_worker(settings: Settings, math: FeatureMath) -> Worker:
    app = FakeApp()
    ownership = Ownership(app, TOPIC, PARTITIONS)
    states: dict[str, EntityState] = {}
    servicer = FeatureServicer(
        math,
        states.get,
        offline=None,  # type: ignore[arg-type] - only lookups here
        routes=Routes(ownership, Forwarder(settings, ownership, 2.0)),
    )
    server = build_server(
        settings,
        [(features_pb2_grpc.add_FeatureServiceServicer_to_server, servicer, "features")],
        "127.0.0.1:0",
        extra_addresses=["127.0.0.1:0"],
    )
    await server.start()
    ownership.announce("127.0.0.1", server.extra_ports[0])
    return Worker(app, server, ownership, states)


@pytest.fixture
async def workers() -> AsyncIterator[tuple[Worker, Worker]]:
    settings = Settings()
    math = FeatureMath(FS)
    first, second = await start_worker(settings, math), await start_worker(settings, math)
    # Partitions 0-1 to the first worker, 2-3 to the second; each entity's state
    # lives only with its owner, holding as many events as its number + 1.
    distribution = {
        f"http://{first.route}": {TOPIC: [0, 1]},
        f"http://{second.route}": {TOPIC: [2, 3]},
    }
    for worker in (first, second):
        worker.app.assignor.changelog_distribution = distribution
    for number, entity in enumerate(ENTITIES):
        owner = first if partition_index(entity.encode(), PARTITIONS) < 2 else second
        owner.states[entity] = counted(math, number + 1)
    yield first, second
    for worker in (first, second):
        await worker.server.stop(0)


async def lookup(
    target: str, entity_ids: list[str], metadata: tuple[tuple[str, str], ...] = ()
) -> tuple[features_pb2.GetOnlineFeaturesResponse, dict[str, Any]]:
    async with grpc.aio.insecure_channel(target) as channel:
        call = features_pb2_grpc.FeatureServiceStub(channel).GetOnlineFeatures(
            features_pb2.GetOnlineFeaturesRequest(
                entity_ids=entity_ids, feature_names=["txn_count_10m"]
            ),
            timeout=5,
            metadata=metadata,
        )
        reply = await call
        return reply, dict(await call.trailing_metadata() or ())


def counts(reply: features_pb2.GetOnlineFeaturesResponse) -> list[tuple[str, int]]:
    return [(e.entity_id, e.values["txn_count_10m"].int_value) for e in reply.entities]


async def test_every_worker_answers_every_entity_in_the_order_asked(
    workers: tuple[Worker, Worker],
) -> None:
    asked = [*reversed(ENTITIES), ENTITIES[3]]
    truth = [(entity, ENTITIES.index(entity) + 1) for entity in asked]
    for worker, other in (workers, reversed(workers)):
        reply, trailing = await lookup(worker.route, asked)
        assert counts(reply) == truth
        assert trailing[ANSWERED_BY] == worker.route
        assert trailing[ROUTED_TO] == other.route


async def test_an_entity_of_the_other_worker_alone_is_forwarded(
    workers: tuple[Worker, Worker],
) -> None:
    first, second = workers
    theirs = next(e for e in ENTITIES if partition_index(e.encode(), PARTITIONS) >= 2)
    reply, trailing = await lookup(first.route, [theirs])
    assert counts(reply) == [(theirs, ENTITIES.index(theirs) + 1)]
    assert trailing[ROUTED_TO] == second.route


async def test_a_rebalance_makes_lookups_unavailable_not_empty(
    workers: tuple[Worker, Worker],
) -> None:
    first, _ = workers
    first.app.rebalancing = True
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await lookup(first.route, ENTITIES[:1])
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "rebalancing" in (raised.value.details() or "")


async def test_a_forwarded_lookup_for_an_entity_owned_elsewhere_is_refused(
    workers: tuple[Worker, Worker],
) -> None:
    """Ownership moved between the sender's view and the receiver's: the call
    does not travel on, the caller retries."""
    first, second = workers
    theirs = next(e for e in ENTITIES if partition_index(e.encode(), PARTITIONS) >= 2)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await lookup(first.route, [theirs], metadata=(("driftloop-forwarded-by", second.route),))
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "entity_ids" in (raised.value.details() or "")


async def test_a_dead_owner_makes_its_entities_unavailable(
    workers: tuple[Worker, Worker],
) -> None:
    first, second = workers
    await second.server.stop(0)
    theirs = next(e for e in ENTITIES if partition_index(e.encode(), PARTITIONS) >= 2)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await lookup(first.route, [ENTITIES[0], theirs])
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    # What the first worker owns is still answered on its own.
    mine = next(e for e in ENTITIES if partition_index(e.encode(), PARTITIONS) < 2)
    reply, _ = await lookup(first.route, [mine])
    assert counts(reply) == [(mine, ENTITIES.index(mine) + 1)]


def test_a_worker_on_an_ipv6_address_is_dialled_in_brackets() -> None:
    app = FakeApp()
    ownership = Ownership(app, TOPIC, PARTITIONS)
    ownership.announce("fd00::7", 50062)
    assert ownership.me == "[fd00::7]:50062"
    app.assignor.changelog_distribution = {
        "http://[fd00::7]:50062": {TOPIC: list(range(PARTITIONS))}
    }
    assert ownership.owner("cust-1") == ownership.me
