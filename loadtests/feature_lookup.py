"""Online feature lookup latency and throughput, from a Python gRPC client.

Starts the embedded broker and the feature store as its own process (as
`driftloop up` would), loads a few thousand events for 1,000 entities, then
calls `GetOnlineFeatures` for 1 and for 10 entities x 10 features: sequentially
for latency, and with several calls in flight for throughput. Prints a table.
With `--workers 1,2` it does it again with two feature-store workers sharing
the port (`driftloop up --scale features=2`): each caller thread has its own
connection, so the kernel spreads them over the workers, and a worker forwards
what it does not own to the other.

    .venv/bin/python loadtests/feature_lookup.py [--seconds 5] [--workers 1,2]

Reference (issue 3): Feast 0.67's HTTP feature server serves one entity at p50
2.6 ms, p99 3.1-3.8 ms, 300-400 lookups/s on this kind of machine. Target: p99
<= 2 ms and at least 3x its lookups/s for one entity.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
from driftloop.v1 import common_pb2, events_pb2, features_pb2, features_pb2_grpc
from driftloop_core.broker import EmbeddedBroker, free_port
from driftloop_core.featureset import load_featureset
from driftloop_core.kafka import Outgoing, Publisher, default_topic_specs, ensure_topics
from driftloop_core.settings import load_settings
from grpc_health.v1 import health_pb2, health_pb2_grpc

FEATURESET = Path(__file__).parent / "data" / "bench_features.yaml"
ENTITIES = 1000


def events(count: int) -> list[events_pb2.Observation]:
    rng = random.Random(3)
    now = int(time.time() * 1000)
    result = []
    for i in range(count):
        message = events_pb2.Observation(
            event_id=f"b{i}",
            entity_id=f"c{i % ENTITIES}",
            feature_set="bench",
            values={
                "amount": common_pb2.FeatureValue(float_value=rng.uniform(1, 500)),
                "channel": common_pb2.FeatureValue(string_value=rng.choice(["web", "pos"])),
                "hour": common_pb2.FeatureValue(int_value=rng.randrange(24)),
                "items": common_pb2.FeatureValue(int_value=rng.randrange(1, 9)),
            },
        )
        message.event_time.FromMilliseconds(now - (count - i) * 200)
        result.append(message)
    return result


async def wait_serving(endpoint: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(endpoint) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.3)
    raise RuntimeError("the feature store did not become ready")


def wait_idle(stub: features_pb2_grpc.FeatureServiceStub) -> None:
    """Until every loaded event is applied: the total count stops changing."""
    request = features_pb2.GetOnlineFeaturesRequest(
        entity_ids=[f"c{i}" for i in range(ENTITIES)], feature_names=["txn_count_10m"]
    )
    # A fixed point in time: without one the 10-minute window slides with the clock.
    request.as_of.FromMilliseconds(int(time.time() * 1000))
    previous = -1
    while True:
        try:
            reply = stub.GetOnlineFeatures(request, timeout=10)
        except grpc.RpcError as error:
            # Workers still settling their partitions answer UNAVAILABLE.
            if error.code() != grpc.StatusCode.UNAVAILABLE:  # type: ignore[attr-defined]
                raise
            time.sleep(1.0)
            continue
        total = sum(e.values["txn_count_10m"].int_value for e in reply.entities if e.values)
        if total == previous:
            return
        previous = total
        time.sleep(1.0)


def measure(
    endpoint: str,
    entities: int,
    seconds: float,
    concurrency: int,
) -> tuple[float, float, float, int]:
    """Blocking calls from `concurrency` threads, each on its own connection:
    p50 and p99 in ms, calls/s, calls."""
    names = list(load_featureset(FEATURESET).model.features)
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        mine: list[float] = []
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(endpoint, options=options) as channel:
            stub = features_pb2_grpc.FeatureServiceStub(channel)
            while time.perf_counter() < stop_at:
                ids = [f"c{rng.randrange(ENTITIES)}" for _ in range(entities)]
                request = features_pb2.GetOnlineFeaturesRequest(entity_ids=ids, feature_names=names)
                started = time.perf_counter()
                reply = stub.GetOnlineFeatures(request, timeout=5)
                mine.append(time.perf_counter() - started)
                assert len(reply.entities) == entities
        latencies.extend(mine)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    return p50, p99, len(latencies) / elapsed, len(latencies)


def spawn_feature_store(
    env: dict[str, str], log_path: Path, worker: int, workers: int
) -> subprocess.Popen[bytes]:
    if workers > 1:
        env = {
            **env,
            "DRIFTLOOP_FEATURES_WORKER": str(worker),
            "DRIFTLOOP_FEATURES_REUSE_PORT": "1",
        }
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "driftloop_features"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


Row = tuple[int, int, float, float, float, int]


async def main(seconds: float, worker_counts: list[int]) -> None:
    tables = [(workers, await run(seconds, workers)) for workers in worker_counts]
    sampler = os.environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on (every call traced)")
    for workers, rows in tables:
        print(
            "\nOnline lookups, 10 features per entity, Python gRPC client, "
            f"{workers} feature-store worker(s)"
        )
        print(f"tracing sampler: {sampler}")
        header = ("entities", "in flight", "p50 ms", "p99 ms", "lookups/s", "calls")
        print("{:>8} {:>9} {:>8} {:>8} {:>10} {:>7}".format(*header))
        for entities, concurrency, p50, p99, rate, calls in rows:
            print(
                f"{entities:>8} {concurrency:>9} {p50:>8.3f} {p99:>8.3f} {rate:>10.0f} {calls:>7}"
            )
    print("target: one entity p99 <= 2 ms and >= 1,200 lookups/s (3x Feast 0.67's 300-400)")


async def run(seconds: float, workers: int) -> list[Row]:
    home = Path(tempfile.mkdtemp(prefix="driftloop-bench-"))
    port = free_port()
    endpoint = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "DRIFTLOOP_HOME": str(home),
        "DRIFTLOOP_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}",
        "DRIFTLOOP_FEATURESET": str(FEATURESET),
        "DRIFTLOOP_ENDPOINTS__FEATURES": endpoint,
        "DRIFTLOOP_LOG_LEVEL": "WARNING",
    }
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    settings = load_settings(home=home, kafka_bootstrap=f"127.0.0.1:{port}")
    async with EmbeddedBroker(port, log_file=home / "broker.log"):
        await ensure_topics(settings.kafka, default_topic_specs(settings.kafka))
        loaded = events(5 * ENTITIES)
        async with Publisher(settings) as publisher:
            await publisher.publish_batch(
                [Outgoing.event(m, key=m.entity_id, event_id=m.event_id) for m in loaded]
            )
        services = [
            spawn_feature_store(env, home / f"features-{i}.log", i, workers) for i in range(workers)
        ]
        rows: list[Row] = []
        try:
            await wait_serving(endpoint)
            with grpc.insecure_channel(endpoint) as channel:
                wait_idle(features_pb2_grpc.FeatureServiceStub(channel))
            for entities, concurrency in ((1, 1), (1, 4), (10, 1), (10, 4)):
                p50, p99, rate, calls = measure(endpoint, entities, seconds, concurrency)
                rows.append((entities, concurrency, p50, p99, rate, calls))
        finally:
            for service in services:
                service.terminate()
            for service in services:
                service.wait(30)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument(
        "--workers", default="1", help="feature-store workers, comma-separated runs (e.g. 1,2)"
    )
    args = parser.parse_args()
    asyncio.run(main(args.seconds, [int(n) for n in args.workers.split(",")]))
