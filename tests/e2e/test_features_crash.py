"""Kill the feature store with SIGKILL mid-stream under `driftloop up`: once the
supervisor has restarted it, every aggregate is exact (nothing lost, nothing
counted twice)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import grpc
import grpc.aio
import pytest
from driftloop.v1 import features_pb2, features_pb2_grpc
from driftloop_testing import produce_json, wait_until
from support.payments import make_payments
from support.stack import DRIFTLOOP, pids, run_json, stack_env

pytestmark = pytest.mark.e2e

ENTITIES = [f"cust-{i}" for i in range(8)]


def make_events(count: int) -> list[dict[str, object]]:
    return make_payments(count, ENTITIES, seed=5)


async def produce(bootstrap: str, events: list[dict[str, object]], pause_s: float) -> None:
    await produce_json(bootstrap, events, pause_every=20, pause_s=pause_s)


async def _lookup_all(target: str) -> features_pb2.GetOnlineFeaturesResponse:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = features_pb2_grpc.FeatureServiceStub(channel)
        request = features_pb2.GetOnlineFeaturesRequest(
            entity_ids=ENTITIES, feature_names=["txn_count_10m", "amount_mean_1h"]
        )
        reply: features_pb2.GetOnlineFeaturesResponse = await stub.GetOnlineFeatures(
            request, timeout=10
        )
        return reply


def test_feature_store_sigkill_mid_stream_keeps_aggregates_exact(tmp_path: Path) -> None:
    env = stack_env(tmp_path / "home")
    bootstrap = env["DRIFTLOOP_KAFKA_BOOTSTRAP"]
    log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen(
        [*DRIFTLOOP, "up", "--only", "ingestion,features"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        before = wait_until(lambda: (p := pids(env))["_all_ready"] and p, 120, "driftloop up")
        assert {"broker", "ingestion", "features"} <= set(before)
        events = make_events(600)
        asyncio.run(produce(bootstrap, events[:300], 0))
        killed_pid = before["features"][0]

        async def second_half_with_a_kill() -> None:
            producing = asyncio.create_task(produce(bootstrap, events[300:], 0.05))
            await asyncio.sleep(1.0)
            os.kill(killed_pid, signal.SIGKILL)
            await producing

        asyncio.run(second_half_with_a_kill())
        wait_until(
            lambda: (p := pids(env))["_all_ready"] and p["features"][0] != killed_pid,
            120,
            "the supervisor to restart the feature store",
        )

        expected = {}
        for entity in ENTITIES:
            mine = [e for e in events if e["customer_id"] == entity]
            amounts = [float(e["amount"]) for e in mine]  # type: ignore[arg-type]
            expected[entity] = (len(mine), sum(amounts) / len(amounts))

        seen: dict[str, object] = {}

        def lookups_match() -> dict[str, object] | None:
            # One gRPC call for every entity: polling with eight CLI processes a
            # round took a core from the recovering feature store on a busy machine.
            try:
                reply = asyncio.run(_lookup_all(env["DRIFTLOOP_ENDPOINTS__FEATURES"]))
            except grpc.aio.AioRpcError as error:
                seen["failed"] = f"{error.code().name}: {error.details()}"
                return None
            found = {
                entity.entity_id: (
                    entity.values["txn_count_10m"].int_value
                    if "txn_count_10m" in entity.values
                    else None,
                    entity.values["amount_mean_1h"].float_value
                    if "amount_mean_1h" in entity.values
                    else None,
                )
                for entity in reply.entities
            }
            seen.clear()
            seen["found"] = found
            exact = all(
                found.get(e, (None, None))[0] == expected[e][0]
                and (mean := found.get(e, (None, None))[1]) is not None
                and abs(mean - expected[e][1]) < 1e-9
                for e in ENTITIES
            )
            return found if exact else None

        try:
            found = wait_until(lookups_match, 120, "exact aggregates")
        except AssertionError:
            raise AssertionError(f"expected {expected}; last lookups {seen}") from None
        assert found is not None
        # What a user sees through the CLI agrees.
        code, doc = run_json(env, "features", "get", ENTITIES[0])
        assert code == 0, doc
        features = doc["features"]
        assert isinstance(features, dict)
        assert features.get("txn_count_10m") == expected[ENTITIES[0]][0]
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(60)
        log.close()
    output = (tmp_path / "up.log").read_text()
    assert "exited with code -9" in output
    assert up.returncode == 0
