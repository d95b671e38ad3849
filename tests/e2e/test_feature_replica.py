"""Predict reads online features from inference's own replica of the entity
table (the feature store's changelog): exact, and still there while the feature
store itself is down."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc.aio
import pytest
from driftloop.v1 import predictor_pb2, predictor_pb2_grpc
from driftloop_testing import wait_until
from google.protobuf.timestamp_pb2 import Timestamp
from support.payments import expected_aggregates
from support.stack import stack_env
from test_features_crash import ENTITIES, _lookup_all, make_events, pids, produce

pytestmark = pytest.mark.e2e

DRIFTLOOP = [sys.executable, "-m", "driftloop_cli"]


async def predict_all(target: str) -> dict[str, tuple[int, float]]:
    """Predict once per entity, as of now; the aggregates each call used."""
    now = Timestamp()
    now.FromMilliseconds(int(time.time() * 1000))
    used = {}
    async with grpc.aio.insecure_channel(target) as channel:
        stub = predictor_pb2_grpc.PredictorStub(channel)
        for index, entity in enumerate(ENTITIES):
            reply = await stub.Predict(
                predictor_pb2.PredictRequest(
                    event_id=f"replica-check-{time.monotonic_ns()}-{index}",
                    entity_id=entity,
                    event_time=now,
                ),
                timeout=10,
            )
            features = reply.features_used
            count = features["txn_count_10m"]
            # As the model's input takes it (a float here), whatever the store's type.
            used[entity] = (
                int(getattr(count, count.WhichOneof("kind") or "int_value")),
                features["amount_mean_1h"].float_value,
            )
    return used


def exact(found: dict[str, tuple[int, float]], expected: dict[str, tuple[int, float]]) -> bool:
    return all(
        found[e][0] == expected[e][0] and abs(found[e][1] - expected[e][1]) < 1e-9 for e in ENTITIES
    )


# `replica`: the store's changelog; `events`: counted in inference from events.valid.
@pytest.mark.parametrize("source", ["replica", "events"])
def test_predict_uses_the_replica_exactly_and_keeps_it_while_the_feature_store_is_down(
    tmp_path: Path, source: str
) -> None:
    env = stack_env(tmp_path / "home", DRIFTLOOP_INFERENCE_FEATURES_SOURCE=source)
    log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen(
        [*DRIFTLOOP, "up", "--only", "registry,ingestion,features,inference"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        ready = wait_until(lambda: (p := pids(env))["_all_ready"] and p, 120, "driftloop up")
        events = make_events(300)
        asyncio.run(produce(env["DRIFTLOOP_KAFKA_BOOTSTRAP"], events, 0))
        expected = expected_aggregates(events, ENTITIES)

        def store_exact() -> bool:
            reply = asyncio.run(_lookup_all(env["DRIFTLOOP_ENDPOINTS__FEATURES"]))
            found = {
                e.entity_id: (
                    e.values["txn_count_10m"].int_value,
                    e.values["amount_mean_1h"].float_value,
                )
                for e in reply.entities
                if "txn_count_10m" in e.values
            }
            return len(found) == len(ENTITIES) and exact(found, expected)

        wait_until(store_exact, 120, "the feature store to count every event")
        inference = env["DRIFTLOOP_ENDPOINTS__INFERENCE"]
        seen: dict[str, object] = {}

        def predict_exact() -> bool:
            seen["used"] = asyncio.run(predict_all(inference))
            return exact(seen["used"], expected)  # type: ignore[arg-type]

        try:
            # The replica trails the store's table by a changelog fetch.
            wait_until(predict_exact, 30, "Predict to use every event")
        except AssertionError:
            raise AssertionError(f"expected {expected}; Predict used {seen}") from None

        # The feature store goes down; Predict still has every entity's features.
        os.kill(int(ready["features"][0]), signal.SIGKILL)
        used = asyncio.run(predict_all(inference))
        assert used == {e: used[e] for e in ENTITIES}
        assert exact(used, expected), (used, expected)
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(60)
        log.close()
    output = (tmp_path / "up.log").read_text()
    assert "feature_replica_ready" in output
