"""Ingestion + feature store end to end: how fast a burst is counted online and logged.

    .venv/bin/python loadtests/feature_throughput.py [--events 20000] [--entities 1000]
        [--hot] [--env NAME=VALUE ...]

Starts a private stack (`driftloop up` with the built-in feature set, its own
home and ports), produces `--events` valid labelled observations to
`events.raw` at once with confluent-kafka (a client users have), then follows
the end offsets of `events.valid` (ingestion's output) and `features.offline`
(one row per event the feature store has applied) every half second until
both hold every event, and the offline sink's committed offsets on
`features.offline` (rows durably in the Parquet log) until it has them all.
Prints the lag over time and, measured in the same run, events/s through
ingestion alone, end to end through the feature store, and into the offline
log; then asks for a training set at once and checks it holds every row.
`--hot` sends every event for one entity (the store's worst case); `--env`
passes settings to every service (e.g. `OTEL_TRACES_SAMPLER=always_off` to
measure without tracing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from adaptation import running_stack, stack_env
from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka import Producer
from driftloop.v1 import features_pb2, features_pb2_grpc
from driftloop_core.featureset import default_featureset_path, load_featureset
from driftloop_core.grpc.client import open_channel
from driftloop_core.kafka.offsets import end_offsets
from driftloop_core.kafka.topics import Topics
from driftloop_core.settings import load_settings

CHANNELS = ("web", "pos", "atm")
FEATURESET = load_featureset(default_featureset_path()).name


def make_events(count: int, entities: int, hot: bool) -> list[tuple[bytes, bytes]]:
    """(key, JSON) of valid payments, labelled, a second apart, ending now."""
    rng = random.Random(7)
    start_ms = int(time.time() * 1000) - count * 1000
    out = []
    for i in range(count):
        customer = "hot" if hot else f"c{rng.randrange(entities)}"
        event = {
            "event_id": f"bench-{i}",
            "customer_id": customer,
            "ts": start_ms + i * 1000,
            "amount": round(rng.uniform(1, 500), 2),
            "channel": rng.choice(CHANNELS),
            "hour": rng.randrange(24),
            "is_fraud": int(rng.random() < 0.05),
        }
        out.append((customer.encode(), json.dumps(event).encode()))
    return out


OFFLINE_GROUP = "driftloop-features-offline"


async def follow(env: dict[str, str], wanted: int) -> list[tuple[float, int, int, int]]:
    """(seconds, valid, logged, in the Parquet log) every half second until all
    three reach `wanted`."""
    os.environ.update(env)  # the stack's broker, for this process's settings
    kafka = load_settings().kafka
    probe = AIOKafkaConsumer(**kafka.client_options(), enable_auto_commit=False)
    sink = AIOKafkaConsumer(
        **kafka.client_options(), group_id=OFFLINE_GROUP, enable_auto_commit=False
    )
    await probe.start()
    await sink.start()
    try:
        await probe.topics()
        parts = {
            topic: [TopicPartition(topic, p) for p in sorted(probe.partitions_for_topic(topic))]
            for topic in (Topics.VALID, Topics.FEATURES_OFFLINE)
        }
        began = time.perf_counter()
        samples: list[tuple[float, int, int, int]] = []
        while True:
            valid = sum((await end_offsets(kafka, probe, parts[Topics.VALID])).values())
            logged = sum((await end_offsets(kafka, probe, parts[Topics.FEATURES_OFFLINE])).values())
            # Labelled observations: one row each, no separate label records.
            stored = 0
            for tp in parts[Topics.FEATURES_OFFLINE]:
                stored += await sink.committed(tp) or 0
            samples.append((time.perf_counter() - began, valid, logged, stored))
            if valid >= wanted and logged >= wanted and stored >= wanted:
                return samples
            if time.perf_counter() - began > 900:
                raise RuntimeError(f"not done after 900 s: {samples[-1]}")
            await asyncio.sleep(0.5)
    finally:
        await sink.stop()
        await probe.stop()


async def training_rows(env: dict[str, str]) -> tuple[int, float]:
    """Rows of a training set over every labelled row, asked for now, and seconds taken."""
    os.environ.update(env)
    settings = load_settings()
    async with open_channel(settings.endpoints.features, settings) as channel:
        stub = features_pb2_grpc.FeatureServiceStub(channel)
        began = time.perf_counter()
        reply = await stub.GetTrainingSet(
            features_pb2.GetTrainingSetRequest(model=FEATURESET), timeout=120
        )
        return reply.dataset.row_count, time.perf_counter() - began


def first_reaching(samples: Sequence[tuple[float, int, int]], index: int, wanted: int) -> float:
    return next(s[0] for s in samples if s[index] >= wanted)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--entities", type=int, default=1_000)
    parser.add_argument("--hot", action="store_true", help="every event for one entity")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="feature-throughput-"))
    env = stack_env(work / "home", None)
    env |= dict(item.split("=", 1) for item in args.env)
    events = make_events(args.events, args.entities, args.hot)
    with running_stack(env, work):
        producer = Producer(
            {"bootstrap.servers": env["DRIFTLOOP_KAFKA_BOOTSTRAP"], "linger.ms": 20}
        )
        sent = time.perf_counter()
        for key, value in events:
            while True:
                try:
                    producer.produce(Topics.RAW, value, key=key)
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.flush(60)
        print(f"{args.events} events produced in {time.perf_counter() - sent:.2f} s")
        samples = asyncio.run(follow(env, args.events))

        rows, asked_s = asyncio.run(training_rows(env))

    print("\n  s     valid   counted   parquet   (lag of the feature store, of the log)")
    step = max(1, len(samples) // 20)
    for at, valid, logged, stored in [*samples[::step], samples[-1]]:
        lags = f"{valid - logged:8d} {valid - stored:8d}"
        print(f"{at:6.1f} {valid:8d} {logged:8d} {stored:9d}   {lags}")
    ingested = first_reaching(samples, 1, args.events)
    counted = first_reaching(samples, 2, args.events)
    stored = first_reaching(samples, 3, args.events)
    shape = "one hot entity" if args.hot else f"{args.entities} entities"
    print(
        f"\n{args.events} events, {shape}: ingestion alone {args.events / ingested:,.0f} events/s; "
        f"end to end (counted online, row published) {args.events / counted:,.0f} events/s; "
        f"into the Parquet log {args.events / stored:,.0f} events/s"
    )
    print(
        f"training set asked for right after: {rows:,} rows of {args.events:,} "
        f"({'every row' if rows == args.events else 'ROWS MISSING'}), built in {asked_s:.1f} s"
    )


if __name__ == "__main__":
    main()
