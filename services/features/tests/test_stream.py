"""The feature store's start after a crash: the stream resumes as soon as the table
is recovered, while the in-memory states are loaded and lookups are turned on.
Nothing the stream counts in that window may be lost, and no lookup may answer
before the states are there."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from driftloop.v1 import common_pb2, events_pb2, features_pb2, features_pb2_grpc
from driftloop_core.feature_math import EntityState, FeatureMath
from driftloop_core.featureset import default_featureset_path, load_featureset
from driftloop_core.grpc.server import build_server
from driftloop_core.kafka import Outgoing, PoisonMessage, Topics
from driftloop_core.kafka.consumer import Record
from driftloop_core.kafka.headers import make_headers, parse_headers
from driftloop_core.settings import load_settings
from driftloop_features.adapters.duckdb_reader import OfflineStore
from driftloop_features.entrypoints.events import Batch, EventsAgent, Send
from driftloop_features.entrypoints.grpc import FeatureServicer
from driftloop_features.stream import OBSERVED, StreamHandler

FS = load_featureset(default_featureset_path())
T0 = 1_763_800_000_000


def observed(event_id: str, entity: str, t_ms: int, amount: float) -> Record:
    message = events_pb2.Observation(event_id=event_id, entity_id=entity, feature_set=FS.name)
    message.event_time.FromMilliseconds(t_ms)
    message.values["amount"].CopyFrom(common_pb2.FeatureValue(float_value=amount))
    message.values["channel"].CopyFrom(common_pb2.FeatureValue(string_value="web"))
    message.values["hour"].CopyFrom(common_pb2.FeatureValue(int_value=3))
    headers = make_headers(OBSERVED, "/test", event_id=event_id).to_kafka()
    return Record(
        Topics.VALID, 0, 0, entity.encode(), message.SerializeToString(),
        parse_headers(headers), tuple(headers), t_ms,
    )  # fmt: skip


def events_agent(table: dict[str, Any], send: Send) -> EventsAgent:
    async def no_deadletter(poisoned: Sequence[tuple[Record, PoisonMessage]]) -> None:
        raise AssertionError(f"dead-lettered: {[poison.reason for _, poison in poisoned]}")

    return EventsAgent(StreamHandler(FeatureMath(FS), table), send, no_deadletter, group="test")


async def test_loading_the_table_keeps_the_state_an_event_is_being_applied_to() -> None:
    table: dict[str, Any] = {}

    async def send_at_once(outgoing: Outgoing) -> None:
        return None

    # Before the crash: one event counted, in the table.
    before = events_agent(table, send_at_once)
    await before.process(Batch([observed("e0", "c1", T0, 10.0)]))

    # After the restart the stream resumes with an empty cache; its next event is
    # suspended while its offline row is sent, and the states are loaded then.
    row_sent = asyncio.Event()
    release = asyncio.Event()

    async def send_slowly(outgoing: Outgoing) -> None:
        if outgoing.topic == Topics.FEATURES_OFFLINE:
            row_sent.set()
            await release.wait()

    after = events_agent(table, send_slowly)
    applying = asyncio.create_task(after.process(Batch([observed("e1", "c1", T0 + 1000, 20.0)])))
    await asyncio.wait_for(row_sent.wait(), 5)
    after.handler.load_all()
    release.set()
    await applying
    await after.process(Batch([observed("e2", "c1", T0 + 2000, 30.0)]))

    math = FeatureMath(FS)
    state = after.handler.state("c1")
    values, _ = math.online(state, ["txn_count_10m"], as_of_ms=None, now_ms=T0 + 3000)
    assert values["txn_count_10m"] == 3
    # The table (what the next restart recovers) holds all three as well.
    assert [e.event_id for e in EntityState.from_json(table["c1"]).events] == ["e0", "e1", "e2"]


@pytest.fixture
async def lookups(tmp_path: Path) -> Any:
    """A FeatureService whose readiness the test turns on."""
    settings = load_settings(home=tmp_path / "home")
    recovered = {"done": False}
    servicer = FeatureServicer(
        FeatureMath(FS),
        lambda entity_id: None,
        OfflineStore(settings, FS),
        ready=lambda: recovered["done"],
    )
    server = build_server(
        settings,
        [
            (
                features_pb2_grpc.add_FeatureServiceServicer_to_server,
                servicer,
                "driftloop.v1.FeatureService",
            )
        ],
        "127.0.0.1:0",
    )
    await server.start()
    async with grpc.aio.insecure_channel(server.endpoint) as channel:
        yield features_pb2_grpc.FeatureServiceStub(channel), recovered
    await server.stop(0)


async def test_lookups_are_unavailable_until_the_table_is_recovered(lookups: Any) -> None:
    stub, recovered = lookups
    request = features_pb2.GetOnlineFeaturesRequest(entity_ids=["c1"])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.GetOnlineFeatures(request, timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "recovering" in (refused.value.details() or "")

    recovered["done"] = True
    reply = await stub.GetOnlineFeatures(request, timeout=5)
    assert reply.entities[0].statuses["txn_count_10m"] == features_pb2.FEATURE_STATUS_NOT_FOUND
