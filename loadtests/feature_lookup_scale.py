"""Online lookups as the feature store grows: 10k, 100k and 1M entities.

    .venv/bin/python loadtests/feature_lookup_scale.py [--entities 10000,100000,1000000]
        [--seconds 5] [--concurrency 1,16] [--events-per-entity 3] [--json PATH]

The store answers lookups from a dict of every entity's state in memory (issue
15: does that stay cheap as the dict grows?). No Kafka: the feature store's own
servicer (`FeatureServicer`, on `build_server` as its bootstrap builds it)
serves `GetOnlineFeatures` on the built-in feature set from a dict grown in
stages to each N, three events an entity as `feature_state.py` builds them,
timed a few minutes ago so every window holds them. At each N it prints:

* resident memory per entity: RSS growth while the stage's entities were
  built, divided by their number;
* µs per `FeatureMath.lookup` alone, without gRPC, for random entities;
* requests/s and p50 / p99 latency of one-entity `GetOnlineFeatures` calls for
  random entities (uniform over N) with 1 and 16 calls in flight, from a
  grpc.aio client in its own process (as inference's would be) for `--seconds`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import grpc.aio
from driftloop.v1 import features_pb2, features_pb2_grpc
from driftloop_core.feature_math import EntityState, FeatureMath, FeatureStatus
from driftloop_core.featureset import default_featureset_path, load_featureset
from driftloop_core.grpc.server import GrpcServer, build_server
from driftloop_core.logging import configure_logging
from driftloop_core.settings import load_settings
from driftloop_features.adapters.duckdb_reader import OfflineStore
from driftloop_features.entrypoints.grpc import FeatureServicer

# Run as a script: the repository's root, so that `loadtests.feature_state` imports.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtests.feature_state import rss_bytes, values

SERVICE_NAME = features_pb2.DESCRIPTOR.services_by_name["FeatureService"].full_name
WARMUP_S = 0.5
IN_PROCESS_CALLS = 20_000


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def grow(
    math: FeatureMath, states: dict[str, EntityState], entities: int, events_each: int
) -> None:
    """Add entities to `states` until it holds `entities`, each with `events_each`
    events a minute apart, the first three minutes ago."""
    first_ms = int(time.time() * 1000) - 180_000
    for e in range(len(states), entities):
        state = states[f"c{e}"] = EntityState()
        for k in range(events_each):
            i = e * events_each + k
            math.apply(state, f"e{i}", first_ms + k * 60_000 + e % 1000, values(i), position=(0, i))


def lookup_us(math: FeatureMath, state_of: Callable[[str], EntityState | None], n: int) -> float:
    """µs per lookup of every feature of a random entity, as the servicer does it."""
    rng = random.Random(n)
    ids = [f"c{rng.randrange(n)}" for _ in range(IN_PROCESS_CALLS)]
    names = tuple(math.feature_names)
    began = time.perf_counter()
    for entity_id in ids:
        state = state_of(entity_id)
        assert state is not None
        _, status = math.lookup(state, names, as_of_ms=None, now_ms=int(time.time() * 1000))
        assert status is FeatureStatus.PRESENT
    return (time.perf_counter() - began) / len(ids) * 1e6


def call_lookups(endpoint: str, n: int, concurrency: int, seconds: float) -> dict[str, float]:
    """Run in the client process: requests/s and p50 / p99 in ms."""
    return asyncio.run(_call_lookups(endpoint, n, concurrency, seconds))


async def _call_lookups(
    endpoint: str, n: int, concurrency: int, seconds: float
) -> dict[str, float]:
    present = features_pb2.FEATURE_STATUS_PRESENT
    async with grpc.aio.insecure_channel(endpoint) as channel:
        stub: features_pb2_grpc.FeatureServiceAsyncStub = features_pb2_grpc.FeatureServiceStub(
            channel
        )

        async def caller(seed: int, until: float, latencies: list[float] | None) -> None:
            rng = random.Random(seed)
            while time.perf_counter() < until:
                request = features_pb2.GetOnlineFeaturesRequest(entity_ids=[f"c{rng.randrange(n)}"])
                began = time.perf_counter()
                reply = await stub.GetOnlineFeatures(request, timeout=5)
                if latencies is None:
                    # Warm-up: also proves the lookups find what they measure.
                    if set(reply.entities[0].statuses.values()) != {present}:
                        raise RuntimeError(f"not every feature is present: {reply}")
                else:
                    latencies.append(time.perf_counter() - began)

        until = time.perf_counter() + WARMUP_S
        await asyncio.gather(*(caller(-i, until, None) for i in range(concurrency)))
        latencies: list[float] = []
        began = time.perf_counter()
        until = began + seconds
        await asyncio.gather(*(caller(i, until, latencies) for i in range(concurrency)))
        elapsed = time.perf_counter() - began
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": cuts[49] * 1000,
        "p99_ms": cuts[98] * 1000,
        "calls": len(latencies),
    }


def lookup_server(math: FeatureMath, states: dict[str, EntityState], home: Path) -> GrpcServer:
    """The feature store's gRPC server on a free port, reading `states`."""
    featureset = math.featureset
    settings = load_settings(home=home)
    servicer = FeatureServicer(math, states.get, OfflineStore(settings, featureset))
    return build_server(
        settings,
        [(features_pb2_grpc.add_FeatureServiceServicer_to_server, servicer, SERVICE_NAME)],
        "127.0.0.1:0",
        untraced_roots=[f"/{SERVICE_NAME}/GetOnlineFeatures"],
    )


async def measure(
    sizes: Sequence[int], seconds: float, concurrencies: Sequence[int], events_each: int
) -> list[dict[str, Any]]:
    math = FeatureMath(load_featureset(default_featureset_path()))
    states: dict[str, EntityState] = {}
    loop = asyncio.get_running_loop()
    figures: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="driftloop-lookup-") as home,
        ProcessPoolExecutor(1, mp_context=get_context("spawn")) as client,
    ):
        async with lookup_server(math, states, Path(home)) as server:
            for n in sizes:
                built = len(states)
                progress(f"building {n - built:,} entities ({n:,} in all)")
                gc.collect()
                before = rss_bytes()
                began = time.perf_counter()
                grow(math, states, n, events_each)
                build_s = time.perf_counter() - began
                gc.collect()
                bytes_per_entity = (rss_bytes() - before) / (n - built)
                # As the store does once it has loaded its table: what lives as
                # long as the process is not walked by every collection.
                gc.freeze()
                progress(f"{n:,} entities: lookups in process")
                row: dict[str, Any] = {
                    "entities": n,
                    "build_s": build_s,
                    "bytes_per_entity": bytes_per_entity,
                    "lookup_us": lookup_us(math, states.get, n),
                    "grpc": {},
                }
                for concurrency in concurrencies:
                    progress(f"{n:,} entities: gRPC, {concurrency} in flight, {seconds:g} s")
                    row["grpc"][concurrency] = await loop.run_in_executor(
                        client, call_lookups, server.endpoint, n, concurrency, seconds
                    )
                figures.append(row)
    # Frozen objects are never freed at exit, and duckdb's bindings (imported
    # with the servicer) would report theirs as leaks.
    gc.unfreeze()
    return figures


def table(figures: list[dict[str, Any]], concurrencies: Sequence[int]) -> str:
    head = "| entities | memory per entity | µs per lookup, in process |"
    rule = "|---:|---:|---:|"
    for concurrency in concurrencies:
        head += f" gRPC c{concurrency}: req/s, p50 / p99 ms |"
        rule += "---|"
    lines = [head, rule]
    for row in figures:
        line = (
            f"| {row['entities']:,} | {row['bytes_per_entity'] / 1024:.2f} KiB "
            f"| {row['lookup_us']:.1f} |"
        )
        for concurrency in concurrencies:
            calls = row["grpc"][concurrency]
            line += (
                f" {calls['requests_per_s']:,.0f}, {calls['p50_ms']:.2f} / {calls['p99_ms']:.2f} |"
            )
        lines.append(line)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entities", default="10000,100000,1000000")
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--concurrency", default="1,16", help="calls in flight")
    parser.add_argument("--events-per-entity", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    sizes = sorted({int(n) for n in args.entities.split(",")})
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    configure_logging("feature-lookup-scale", "WARNING")
    figures = asyncio.run(measure(sizes, args.seconds, concurrencies, args.events_per_entity))
    print(f"Online lookups by entities in the store ({args.events_per_entity} events each):")
    print(table(figures, concurrencies))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
