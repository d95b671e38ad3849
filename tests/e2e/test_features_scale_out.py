"""Two feature-store workers (`driftloop up --scale features=2`) split the
partitions of `events.valid` and of the entity table, and every lookup through
the shared port is exact for every entity, whichever worker the caller's
connection reached; a worker killed mid-stream leaves the aggregates exact and
lookups answering again once the group has settled."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import grpc
import grpc.aio
import pytest
from driftloop.v1 import features_pb2, features_pb2_grpc
from driftloop_testing import produce_json, wait_until
from support.payments import expected_aggregates, make_payments
from support.stack import DRIFTLOOP, pids, stack_env

pytestmark = pytest.mark.e2e

# Enough entities that both workers own some (4 partitions).
ENTITIES = [f"cust-{i}" for i in range(24)]
NAMES = ["txn_count_10m", "amount_mean_1h"]
# Fresh connections per round: the kernel spreads them over the two workers.
CONNECTIONS = 8


def exact(
    reply: features_pb2.GetOnlineFeaturesResponse, expected: dict[str, tuple[int, float]]
) -> bool:
    found = {entity.entity_id: entity for entity in reply.entities}
    return [e.entity_id for e in reply.entities] == ENTITIES and all(
        found[e].values["txn_count_10m"].int_value == expected[e][0]
        and abs(found[e].values["amount_mean_1h"].float_value - expected[e][1]) < 1e-9
        for e in ENTITIES
    )


async def lookup_round(
    target: str,
) -> list[tuple[features_pb2.GetOnlineFeaturesResponse, dict[str, str]]]:
    """Every entity at once through `CONNECTIONS` new connections; each reply
    with its trailing metadata (who answered, whom it asked)."""

    async def one(index: int) -> tuple[features_pb2.GetOnlineFeaturesResponse, dict[str, str]]:
        options = [
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.primary_user_agent", f"probe-{index}"),
        ]
        async with grpc.aio.insecure_channel(target, options=options) as channel:
            stub = features_pb2_grpc.FeatureServiceStub(channel)
            call = stub.GetOnlineFeatures(
                features_pb2.GetOnlineFeaturesRequest(entity_ids=ENTITIES, feature_names=NAMES),
                timeout=10,
            )
            reply = await call
            trailing = {key: str(value) for key, value in (await call.trailing_metadata() or ())}
            return reply, trailing

    return list(await asyncio.gather(*(one(i) for i in range(CONNECTIONS))))


def test_two_feature_workers_answer_every_lookup_exactly_and_survive_a_kill(
    tmp_path: Path,
) -> None:
    env = stack_env(tmp_path / "home")
    bootstrap = env["DRIFTLOOP_KAFKA_BOOTSTRAP"]
    target = env["DRIFTLOOP_ENDPOINTS__FEATURES"]
    log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen(
        [*DRIFTLOOP, "up", "--only", "ingestion,features", "--scale", "features=2"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        before = wait_until(lambda: (p := pids(env))["_all_ready"] and p, 120, "driftloop up")
        assert {"broker", "ingestion", "features", "features-2"} <= set(before)
        assert before["features"][0] != before["features-2"][0]

        events = make_payments(600, ENTITIES, seed=11)
        asyncio.run(produce_json(bootstrap, events[:300]))
        expected = expected_aggregates(events[:300], ENTITIES)
        last: dict[str, object] = {}

        def both_workers_exact() -> bool:
            try:
                replies = asyncio.run(lookup_round(target))
            except grpc.aio.AioRpcError as error:
                last["failed"] = f"{error.code().name}: {error.details()}"
                return False
            last["answered_by"] = sorted(
                {t.get("driftloop-features-worker", "") for _, t in replies}
            )
            last["exact"] = [exact(reply, expected) for reply, _ in replies]
            return all(last["exact"])  # type: ignore[arg-type]

        try:
            wait_until(both_workers_exact, 120, "exact lookups through the shared port")
        except AssertionError:
            raise AssertionError(
                f"lookups not exact through the shared port; last round: {last}"
            ) from None
        # Both workers answered, and each asked the other for what it owns.
        seen_workers: set[str] = set()
        routed: set[str] = set()
        for _ in range(5):
            replies = asyncio.run(lookup_round(target))
            assert all(exact(reply, expected) for reply, _ in replies)
            for _, trailing in replies:
                seen_workers.add(trailing["driftloop-features-worker"])
                routed.update(
                    filter(None, trailing.get("driftloop-features-routed-to", "").split(","))
                )
            if len(seen_workers) == 2:
                break
        assert len(seen_workers) == 2, f"one worker answered every connection: {seen_workers}"
        assert routed <= seen_workers and routed, (seen_workers, routed)

        # Kill the second worker half-way through the second half of the stream.
        killed = before["features-2"][0]
        assert isinstance(killed, int)
        outcomes: list[tuple[float, str]] = []

        async def second_half_with_a_kill() -> None:
            producing = asyncio.create_task(
                produce_json(bootstrap, events[300:], pause_every=20, pause_s=0.05)
            )
            await asyncio.sleep(0.5)
            os.kill(killed, signal.SIGKILL)
            killed_at = time.monotonic()
            async with grpc.aio.insecure_channel(target) as channel:
                stub = features_pb2_grpc.FeatureServiceStub(channel)
                request = features_pb2.GetOnlineFeaturesRequest(
                    entity_ids=ENTITIES, feature_names=NAMES
                )
                while time.monotonic() - killed_at < 90:
                    try:
                        await stub.GetOnlineFeatures(request, timeout=5)
                        outcomes.append((time.monotonic() - killed_at, "OK"))
                        if (
                            producing.done()
                            and outcomes[-5:] == [(t, "OK") for t, _ in outcomes[-5:]]
                            and len(outcomes) > 5
                        ):
                            break
                    except grpc.aio.AioRpcError as error:
                        outcomes.append((time.monotonic() - killed_at, error.code().name))
                    await asyncio.sleep(0.2)
            await producing

        asyncio.run(second_half_with_a_kill())
        failures = [(t, code) for t, code in outcomes if code != "OK"]
        # Unavailable, never wrong: a lookup that cannot be answered says so.
        assert {code for _, code in failures} <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}, failures
        assert outcomes[-1][1] == "OK", outcomes[-10:]
        unavailable_s = failures[-1][0] - failures[0][0] if failures else 0.0
        print(
            f"lookups failed for {unavailable_s:.1f}s after the kill "
            f"({len(failures)} of {len(outcomes)} calls)"
        )

        wait_until(
            lambda: (p := pids(env))["_all_ready"] and p["features-2"][0] != killed,
            120,
            "the supervisor to restart the second worker",
        )
        expected = expected_aggregates(events, ENTITIES)
        try:
            wait_until(both_workers_exact, 120, "exact lookups after the kill")
        except AssertionError:
            raise AssertionError(f"lookups not exact after the kill; last round: {last}") from None
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(60)
        log.close()
    output = (tmp_path / "up.log").read_text()
    assert "exited with code -9" in output
    assert up.returncode == 0
