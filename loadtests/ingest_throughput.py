"""Ingestion throughput on the embedded broker: validated events per second.

    .venv/bin/python loadtests/ingest_throughput.py [--events 200000] [--grpc-events 50000]

Starts its own Tansu broker on a free port, creates the topics, preloads
`--events` valid JSON events into `events.raw` with a batching producer, then
runs one ingestion pipeline (the real `build()` of the service, Kafka consumer
and gRPC server) and measures:

* Kafka path: events per second from the first fetched batch to the commit of
  the last one (validated, published to `events.valid` with acknowledgements,
  indexed in SQLite, offsets committed);
* gRPC path: events per second of one `IngestStream` call from one client
  (a separate process), from the first message sent to the response.

Telemetry is on as in the service (spans to OTLP-JSON lines under a temporary
`DRIFTLOOP_HOME`) and the garbage collector is tuned as `__main__` tunes it;
`--no-telemetry` and `--default-gc` measure without them. Target: at least
20,000 events/s on the Kafka path.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from driftloop.v1 import ingest_pb2, ingest_pb2_grpc
from driftloop_core.broker import EmbeddedBroker, free_port
from driftloop_core.featureset import default_featureset_path, load_featureset
from driftloop_core.grpc.client import insecure_channel
from driftloop_core.kafka.topics import Topics, default_topic_specs, ensure_topics
from driftloop_core.settings import Settings, load_settings
from driftloop_core.telemetry import init_telemetry
from driftloop_ingestion.bootstrap import IngestionService, build, tune_gc
from driftloop_ingestion.config import IngestionSettings

TARGET_EVENTS_PER_S = 20_000
CHANNELS = ("web", "pos", "atm")


def make_events(count: int, prefix: str, seed: int = 7) -> list[bytes]:
    """Valid payments observations, one JSON object each, about a second apart."""
    rng = random.Random(seed)
    start_ms = int(time.time() * 1000) - count * 1000
    return [
        orjson.dumps(
            {
                "event_id": f"{prefix}-{i}",
                "customer_id": f"c{rng.randrange(10_000)}",
                "ts": start_ms + i * 1000,
                "amount": round(rng.uniform(0, 500), 2),
                "channel": rng.choice(CHANNELS),
                "hour": rng.randrange(24),
            }
        )
        for i in range(count)
    ]


async def preload(settings: Settings, events: list[bytes]) -> float:
    """Write the events to events.raw as a plain producer would; return seconds taken."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        linger_ms=20,
        max_batch_size=1024 * 1024,
        max_request_size=4 * 1024 * 1024,
        acks=1,
    )
    await producer.start()
    started = time.perf_counter()
    try:
        for start in range(0, len(events), 20_000):
            futures = [
                await producer.send(Topics.RAW, value) for value in events[start : start + 20_000]
            ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def count_records(settings: Settings, topic: str, expected: int) -> int:
    """Records in `topic`, read to the end (the embedded broker's ListOffsets
    answers are not reliable enough to count with)."""
    reader = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await reader.start()
    seen = 0
    try:
        while True:
            fetched = await reader.getmany(timeout_ms=1000 if seen >= expected else 3000)
            if not fetched:
                return seen
            seen += sum(len(records) for records in fetched.values())
    finally:
        await reader.stop()


def cpu_seconds(pid: int | None) -> float:
    """User plus system CPU time of a process, from /proc (0 where unavailable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def kafka_path(service: IngestionService, count: int, timeout_s: float) -> float:
    """Wait until the consumer committed `count` records; return events per second."""
    consumer = service.consumer
    assert consumer is not None
    try:
        async with asyncio.timeout(timeout_s):
            await consumer.wait_handled(count)
    except TimeoutError:
        raise TimeoutError(
            f"only {consumer.stats.records} of {count} events in {timeout_s}s"
        ) from None
    stats = consumer.stats
    assert stats.first_fetched_at is not None and stats.last_committed_at is not None
    return count / (stats.last_committed_at - stats.first_fetched_at)


async def grpc_client(endpoint: str, count: int) -> None:
    """Client half of the gRPC run, in its own process so that it does not share
    the server's core: stream `count` events, print {"rate", "accepted"} as JSON."""
    requests = [
        ingest_pb2.IngestStreamRequest(json=value.decode())
        for value in make_events(count, "g", seed=11)
    ]

    async def stream() -> AsyncIterator[ingest_pb2.IngestStreamRequest]:
        for request in requests:
            yield request

    settings = load_settings()
    async with insecure_channel(endpoint, settings) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        started = time.perf_counter()
        response = await stub.IngestStream(stream())
        elapsed = time.perf_counter() - started
    print(json.dumps({"rate": count / elapsed, "accepted": response.accepted}))


async def grpc_path(endpoint: str, count: int) -> tuple[float, int]:
    """One client process streaming `count` events through IngestStream."""
    client = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--grpc-client",
        endpoint,
        "--grpc-events",
        str(count),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await client.communicate()
    if client.returncode != 0:
        raise RuntimeError(f"the gRPC client exited with {client.returncode}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    return float(result["rate"]), int(result["accepted"])


async def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="driftloop-loadtest-") as tmp:
        return await measure(args, Path(tmp))


async def measure(args: argparse.Namespace, workdir: Path) -> int:
    broker = EmbeddedBroker(free_port(), log_file=workdir / "broker.log")
    async with broker:
        settings = load_settings(
            home=workdir / "home",
            kafka_bootstrap=broker.bootstrap,
            service_name="ingestion",
            log_level="WARNING",
        )
        telemetry = init_telemetry(settings) if args.telemetry else None
        await ensure_topics(settings.kafka, default_topic_specs(settings.kafka))
        featureset = load_featureset(default_featureset_path())

        events = make_events(args.events, "k")
        preload_s = await preload(settings, events)

        config = IngestionSettings(kafka_batch_size=args.batch)
        service = build(settings, featureset, config, grpc_address="127.0.0.1:0")
        if args.tune_gc:
            tune_gc()  # as `python -m driftloop_ingestion` does
        profiler = cProfile.Profile() if args.profile else None
        if profiler is not None:
            profiler.enable()
        broker_cpu = cpu_seconds(broker.pid)
        own_cpu = time.process_time()
        await service.start()
        try:
            kafka_rate = await kafka_path(service, args.events, args.timeout)
            broker_cpu = cpu_seconds(broker.pid) - broker_cpu
            own_cpu = time.process_time() - own_cpu
            if profiler is not None:
                profiler.disable()
            published = await count_records(settings, Topics.VALID, args.events)
            grpc_rate, grpc_accepted, grpc_cpu = (0.0, 0, 0.0)
            if args.grpc_events:
                grpc_cpu = time.process_time()
                grpc_rate, grpc_accepted = await grpc_path(service.endpoint, args.grpc_events)
                grpc_cpu = time.process_time() - grpc_cpu
            stats = service.consumer.stats if service.consumer else None
        finally:
            await service.stop()
        if telemetry is not None:
            telemetry.shutdown()

    rows = [
        ("preload events.raw", f"{args.events / preload_s:,.0f} events/s", f"{preload_s:.2f} s"),
        (
            "kafka: events.raw -> events.valid",
            f"{kafka_rate:,.0f} events/s",
            f"{args.events} events, {stats.batches if stats else 0} batches",
        ),
        (
            "grpc: IngestStream, 1 client",
            f"{grpc_rate:,.0f} events/s" if args.grpc_events else "-",
            f"{grpc_accepted} accepted, server CPU {grpc_cpu / args.grpc_events * 1e6:.0f} us/event"
            if args.grpc_events
            else "skipped",
        ),
    ]
    width = max(len(row[0]) for row in rows)
    print(f"\n{'path'.ljust(width)}  {'throughput':>18}  detail")
    for name, rate, detail in rows:
        print(f"{name.ljust(width)}  {rate:>18}  {detail}")
    consumer_stats = stats
    if consumer_stats and consumer_stats.first_fetched_at and consumer_stats.last_committed_at:
        wall = consumer_stats.last_committed_at - consumer_stats.first_fetched_at
        print(
            f"\nkafka run: {wall:.2f} s wall; CPU (including group join) ingestion "
            f"{own_cpu:.2f} s, broker {broker_cpu:.2f} s"
        )
    print(
        f"events.valid holds {published} records; telemetry "
        f"{'on' if args.telemetry else 'off'}; target {TARGET_EVENTS_PER_S:,} events/s on "
        f"the Kafka path: {'met' if kafka_rate >= TARGET_EVENTS_PER_S else 'NOT met'}"
    )
    if profiler is not None:
        pstats.Stats(profiler).sort_stats(args.profile_sort).print_stats(args.profile_lines)
    if published < args.events:
        print(f"error: only {published} of {args.events} events reached events.valid")
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="events preloaded on Kafka")
    parser.add_argument("--grpc-events", type=int, default=50_000, help="0 skips the gRPC run")
    parser.add_argument("--batch", type=int, default=5000, help="records per consumer batch")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for the Kafka run")
    parser.add_argument(
        "--no-telemetry", dest="telemetry", action="store_false", help="leave tracing off"
    )
    parser.add_argument(
        "--default-gc", dest="tune_gc", action="store_false", help="keep Python's GC thresholds"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the Kafka run")
    parser.add_argument("--profile-sort", default="tottime")
    parser.add_argument("--profile-lines", type=int, default=40)
    parser.add_argument("--grpc-client", metavar="ENDPOINT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.grpc_client:
        asyncio.run(grpc_client(args.grpc_client, args.grpc_events))
        return 0
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
