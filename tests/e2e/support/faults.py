"""The fault suite's stream, its truth, its clients and an application's probe.

Shared by the modules of `tests/faults/` (pytest imports test modules by path,
`--import-mode=importlib`, so they cannot import each other): a seeded stream
of labelled payments with event ids, the truth computed from what the broker
acknowledged, the clients a test drives a `driftloop up` stack with and reads
it through (gRPC, topics, metrics, drift's state file), and an application
calling inference while faults happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sqlite3
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import grpc.aio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from driftloop.v1 import (
    common_pb2,
    events_pb2,
    features_pb2,
    features_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    predictor_pb2,
    predictor_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from driftloop_cli.commands.train import training_request
from driftloop_core.kafka import Publisher, Topics
from driftloop_core.kafka.offsets import end_offsets
from driftloop_testing import eventually
from driftloop_testing.kafka import read_topic as read_records
from google.protobuf.message import DecodeError
from inference import grpc_service_pb2 as oip
from inference import grpc_service_pb2_grpc as oip_grpc
from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")

MODEL = "payments"
ENTITIES = [f"cust-{i:02d}" for i in range(12)]
NUMBERS = ("amount", "hour", "amount_mean_1h", "txn_count_10m")
OIP_SERVICE = "inference.GRPCInferenceService"
# Consumer groups of the services, as `kafka-consumer-groups --describe` shows them.
GROUPS = {
    Topics.RAW: "driftloop-ingestion",
    Topics.VALID: "driftloop-features",
    Topics.FEATURES_OFFLINE: "driftloop-features-offline",
    Topics.MODELS_TRAINED: "driftloop-registry",
    Topics.TRAINING_REQUESTED: "driftloop-trainer",
}
# Short reconnect backoff: the test's own clients must see a restarted server at
# once, not after gRPC's default backoff (up to two minutes).
CLIENT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


# ---------------------------------------------------------------------- the stream


class EventSource:
    """Seeded labelled payments with ids `f-<n>` and event times that only go up.

    Fraud is a large ATM withdrawal (2% of labels flipped): learnable from the
    raw fields, so every training run finds both classes and a usable model.
    """

    def __init__(self, seed: int = 8) -> None:
        self._rng = random.Random(seed)
        self._next = 0
        # The first event five minutes ago, 150 ms of event time apart: the suite's
        # 800 events span two minutes, inside both windows (10 min, 1 h) all along.
        self._start_ms = int(time.time() * 1000) - 300_000

    def take(self, count: int) -> list[dict[str, Any]]:
        events = []
        for _ in range(count):
            n = self._next
            self._next += 1
            channel = self._rng.choice(["web", "pos", "atm"])
            amount = round(self._rng.uniform(1, 500), 2)
            fraud = int(channel == "atm" and amount > 250)
            if self._rng.random() < 0.02:
                fraud = 1 - fraud
            events.append(
                {
                    "event_id": f"f-{n}",
                    "customer_id": self._rng.choice(ENTITIES),
                    "ts": self._start_ms + n * 150,
                    "amount": amount,
                    "channel": channel,
                    "hour": self._rng.randrange(24),
                    "is_fraud": fraud,
                }
            )
        return events


class Truth:
    """What the stack must hold: every acknowledged observation, once."""

    def __init__(self) -> None:
        self.events: dict[str, dict[str, Any]] = {}

    def acknowledged(self, events: Iterable[dict[str, Any]]) -> None:
        for event in events:
            self.events.setdefault(str(event["event_id"]), event)

    def counts(self) -> dict[str, tuple[int, float]]:
        amounts: dict[str, list[float]] = defaultdict(list)
        for event in self.events.values():
            amounts[str(event["customer_id"])].append(float(event["amount"]))
        return {e: (len(a), sum(a) / len(a)) for e, a in amounts.items()}

    @property
    def labelled(self) -> int:
        return sum(1 for e in self.events.values() if "is_fraud" in e)


@dataclass
class Difference:
    """Online counts against the truth, summed over entities."""

    lost: int
    twice: int
    means_exact: bool
    # entity -> ((count, mean) expected, (count, mean) seen), where they differ
    mismatched: dict[str, Any] = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        return self.lost == 0 and self.twice == 0 and self.means_exact

    def __bool__(self) -> bool:
        return self.exact


def difference(
    truth: Truth,
    seen: dict[str, tuple[int, float | None]],
    entities: Sequence[str] = ENTITIES,
) -> Difference:
    expected = truth.counts()
    lost = twice = 0
    means_exact = True
    mismatched: dict[str, Any] = {}
    for entity in entities:
        want_count, want_mean = expected.get(entity, (0, 0.0))
        count, mean = seen.get(entity, (0, None))
        lost += max(want_count - count, 0)
        twice += max(count - want_count, 0)
        mean_differs = bool(want_count) and (mean is None or abs(mean - want_mean) > 1e-9)
        means_exact = means_exact and not mean_differs
        if count != want_count or mean_differs:
            mismatched[entity] = ((want_count, want_mean), (count, mean))
    return Difference(lost, twice, means_exact, mismatched)


# ---------------------------------------------------------------------- polling


async def seconds_until(
    check: Callable[[], Any], since: float, timeout_s: float, what: str
) -> float:
    """Seconds from `since` (monotonic) until `check` holds."""
    await eventually(check, timeout_s, what)
    return time.monotonic() - since


# ---------------------------------------------------------------------- clients


@dataclass
class Call:
    """One inference call: when it started and ended, and what it answered."""

    at: float
    kind: str  # infer | predict_full | predict_lookup
    code: str
    version: int | None = None
    txn_count: float | None = None
    entity: str = ""
    defaults: tuple[str, ...] = ()
    end: float = 0.0

    def overlaps(self, start: float, end: float) -> bool:
        return self.at < end and self.end > start

    @property
    def outcome(self) -> str:
        """The status code, or OK_DEFAULTS when features took their defaults."""
        return "OK_DEFAULTS" if self.code == "OK" and self.defaults else self.code


class Lags(dict[str, dict[int, int]]):
    """Records each consumer still has to read, by partition; true once all are zero."""

    def __bool__(self) -> bool:
        return not any(any(lags.values()) for lags in self.values())

    def total(self, consumer: str, topic: str) -> int:
        return sum(sum(v.values()) for k, v in self.items() if k == f"{consumer} {topic}")


@dataclass
class IngestFigures:
    chunks: int = 0
    retried_calls: int = 0
    accepted: int = 0
    duplicates: int = 0


class Clients:
    """The test's producer, gRPC channels and topic reader on one stack."""

    def __init__(self, stack: Any) -> None:
        self.stack = stack
        self.settings = stack.settings
        self.endpoints = stack.endpoints
        self.producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.records: dict[str, list[Any]] = defaultdict(list)
        self._reader: AIOKafkaConsumer | None = None
        self._reading: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Clients:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading
        if self._reader is not None:
            await self._reader.stop()
        await self.producer.stop()
        for channel in self._channels.values():
            await channel.close()

    def channel(self, service: str) -> grpc.aio.Channel:
        if service not in self._channels:
            target = getattr(self.endpoints, service)
            self._channels[service] = grpc.aio.insecure_channel(target, options=CLIENT_OPTIONS)
        return self._channels[service]

    # -- topics, read from the beginning while the test runs

    async def follow(self, *topics: str) -> None:
        self._reader = AIOKafkaConsumer(bootstrap_servers=self.stack.bootstrap, group_id=None)
        await self._reader.start()
        await self._reader.topics()
        tps = [
            TopicPartition(topic, p)
            for topic in topics
            for p in self._reader.partitions_for_topic(topic) or ()
        ]
        self._reader.assign(tps)
        await self._reader.seek_to_beginning(*tps)

        async def read() -> None:
            assert self._reader is not None
            while True:
                batches = await self._reader.getmany(timeout_ms=100)
                for tp, messages in batches.items():
                    self.records[tp.topic].extend(messages)

        self._reading = asyncio.create_task(read())

    def decoded(self, topic: str, message: Any) -> list[Any]:
        found = []
        for record in self.records[topic]:
            with contextlib.suppress(DecodeError):
                found.append(message.FromString(record.value))
        return found

    def trained(self, request_id: str) -> bool:
        return any(
            m.request_id == request_id
            for m in self.decoded(Topics.MODELS_TRAINED, events_pb2.ModelTrained)
        )

    def registered(self, request_id: str) -> bool:
        return any(
            m.request_id == request_id
            for m in self.decoded(Topics.MODELS_REGISTERED, events_pb2.ModelRegistered)
        )

    def dead_letters(self) -> list[events_pb2.DeadLetter]:
        return self.decoded(Topics.DEADLETTER, events_pb2.DeadLetter)

    # -- producing

    async def raw(
        self,
        events: list[dict[str, Any]],
        truth: Truth | None,
        *,
        pause_every: int = 0,
        pause_s: float = 0.0,
        sent: list[int] | None = None,
    ) -> int:
        """Write events to `events.raw` one at a time, each acknowledged by the broker."""
        for i, event in enumerate(events):
            await self.producer.send_and_wait(
                Topics.RAW, json.dumps(event).encode(), key=str(event["customer_id"]).encode()
            )
            if truth is not None:
                truth.acknowledged([event])
            if sent is not None:
                sent[0] += 1
            if pause_every and i % pause_every == pause_every - 1:
                await asyncio.sleep(pause_s)
        return len(events)

    async def ingest(
        self,
        events: list[dict[str, Any]],
        truth: Truth | None,
        *,
        chunk: int = 20,
        pause_s: float = 0.0,
        timeout_s: float = 90.0,
    ) -> IngestFigures:
        """Send events through `IngestStream`, `chunk` per call. A call that fails
        is sent again whole until it is answered, as an at-least-once producer does;
        events count as acknowledged once a reply covers them."""
        stub = ingest_pb2_grpc.IngestServiceStub(self.channel("ingestion"))
        figures = IngestFigures()
        deadline = time.monotonic() + timeout_s
        for start in range(0, len(events), chunk):
            part = events[start : start + chunk]
            figures.chunks += 1
            while True:
                requests = [ingest_pb2.IngestStreamRequest(json=json.dumps(e)) for e in part]
                try:
                    reply = await stub.IngestStream(iter(requests), timeout=5)
                    break
                except grpc.aio.AioRpcError:
                    figures.retried_calls += 1
                    assert time.monotonic() < deadline, "ingestion never answered"
                    await asyncio.sleep(0.25)
            assert reply.rejected == 0, reply.rejections
            figures.accepted += reply.accepted
            figures.duplicates += reply.duplicates
            if truth is not None:
                truth.acknowledged(part)
            await asyncio.sleep(pause_s)
        return figures

    async def publish_raw(
        self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]]
    ) -> tuple[int, int]:
        """One record as it is; returns its (partition, offset)."""
        metadata = await self.producer.send_and_wait(topic, value, key=key, headers=headers)
        return metadata.partition, metadata.offset

    async def request_training(self, reason: str) -> str:
        request = training_request(MODEL, reason, None)
        async with Publisher(self.settings.for_service("faults")) as publisher:
            await publisher.publish_event(request, key=MODEL)
        return request.request_id

    # -- the services' answers

    async def online(
        self, entities: Sequence[str] = ENTITIES
    ) -> dict[str, tuple[int, float | None]] | None:
        """Every entity's `txn_count_10m` and `amount_mean_1h`, or None while the
        feature store does not answer."""
        stub = features_pb2_grpc.FeatureServiceStub(self.channel("features"))
        try:
            reply = await stub.GetOnlineFeatures(
                features_pb2.GetOnlineFeaturesRequest(
                    entity_ids=entities, feature_names=["txn_count_10m", "amount_mean_1h"]
                ),
                timeout=2,
            )
        except grpc.aio.AioRpcError:
            return None
        seen: dict[str, tuple[int, float | None]] = {}
        for entity in reply.entities:
            count = entity.values.get("txn_count_10m")
            mean = entity.values.get("amount_mean_1h")
            seen[entity.entity_id] = (
                count.int_value if count is not None else 0,
                mean.float_value if mean is not None else None,
            )
        return seen

    async def exact(self, truth: Truth, entities: Sequence[str] = ENTITIES) -> Difference | None:
        """The difference from the truth (true when there is none), None while the
        feature store does not answer."""
        seen = await self.online(entities)
        return None if seen is None else difference(truth, seen, entities)

    async def compare(self, truth: Truth) -> Difference | None:
        seen = await self.online()
        return None if seen is None else difference(truth, seen)

    async def training_rows(self) -> int:
        stub = features_pb2_grpc.FeatureServiceStub(self.channel("features"))
        try:
            reply = await stub.GetTrainingSet(
                features_pb2.GetTrainingSetRequest(model=MODEL), timeout=10
            )
        except grpc.aio.AioRpcError:
            return 0
        return int(reply.dataset.row_count)

    async def versions(self) -> list[registry_pb2.ModelVersion]:
        stub = registry_pb2_grpc.RegistryServiceStub(self.channel("registry"))
        reply = await stub.ListVersions(registry_pb2.ListVersionsRequest(model=MODEL), timeout=5)
        return list(reply.versions)

    async def champion(self) -> int | None:
        stub = registry_pb2_grpc.RegistryServiceStub(self.channel("registry"))
        try:
            reply = await stub.GetChampion(registry_pb2.GetChampionRequest(model=MODEL), timeout=5)
        except grpc.aio.AioRpcError:
            return None
        return int(reply.model_version.version)

    async def served_version(self) -> int | None:
        """The version inference answers ModelInfer with, None while it cannot."""
        call = await infer(self.channel("inference"), ENTITIES[0], 0)
        return call.version if call.code == "OK" else None

    def drift_state(self) -> tuple[dict[str, Any] | None, dict[tuple[str, int], int]]:
        """Drift's saved state and positions, read as `sqlite3 <file>` would."""
        path = self.settings.ephemeral_dir / "drift" / f"{MODEL}.sqlite"
        if not path.exists():
            return None, {}
        with contextlib.closing(sqlite3.connect(str(path), timeout=5)) as db:
            row = db.execute("SELECT data FROM state WHERE id = 1").fetchone()
            positions = {
                (topic, partition): offset
                for topic, partition, offset in db.execute(
                    "SELECT topic, partition, next_offset FROM positions"
                )
            }
        return (None if row is None else json.loads(row[0])), positions

    def drift_labels(self) -> int:
        state, _ = self.drift_state()
        return 0 if state is None else int(state["labels"]["total"])

    async def end(self, topic: str) -> int:
        """Records written to `topic` so far, over its partitions."""
        probe = AIOKafkaConsumer(bootstrap_servers=self.stack.bootstrap, group_id=None)
        await probe.start()
        try:
            await probe.topics()
            tps = [TopicPartition(topic, p) for p in probe.partitions_for_topic(topic) or ()]
            return sum((await end_offsets(self.settings.kafka, probe, tps)).values())
        finally:
            await probe.stop()

    async def lag(self, group: str, topic: str) -> dict[int, int]:
        """Records between the group's committed offset and the end, by partition.

        Read by a client of the group that does not join it (no subscription), as
        `kafka-consumer-groups --describe` does; the embedded broker's answer to the
        admin client's OffsetFetch does not decode in aiokafka."""
        probe = AIOKafkaConsumer(
            bootstrap_servers=self.stack.bootstrap, group_id=group, enable_auto_commit=False
        )
        await probe.start()
        try:
            await probe.topics()
            tps = [TopicPartition(topic, p) for p in probe.partitions_for_topic(topic) or ()]
            ends = await end_offsets(self.settings.kafka, probe, tps)
            return {tp.partition: max(ends[tp] - (await probe.committed(tp) or 0), 0) for tp in tps}
        finally:
            await probe.stop()

    async def drift_lag(self, topic: str) -> dict[int, int]:
        probe = AIOKafkaConsumer(bootstrap_servers=self.stack.bootstrap, group_id=None)
        await probe.start()
        try:
            await probe.topics()
            tps = [TopicPartition(topic, p) for p in probe.partitions_for_topic(topic) or ()]
            ends = await end_offsets(self.settings.kafka, probe, tps)
        finally:
            await probe.stop()
        _, positions = self.drift_state()
        return {
            tp.partition: max(ends[tp] - positions.get((topic, tp.partition), 0), 0) for tp in tps
        }

    def metric(self, service: str, name: str, **labels: str) -> float:
        port = self.settings.metrics_port_for(service)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    total += sample.value
        return total


def payment_values(rng: random.Random, entity: str) -> dict[str, Any]:
    return {
        "amount": round(rng.uniform(1, 500), 2),
        "channel": rng.choice(["web", "pos", "atm"]),
        "hour": rng.randrange(24),
        "amount_mean_1h": round(rng.uniform(1, 500), 2),
        "txn_count_10m": rng.randrange(1, 60),
    }


def infer_request(values: dict[str, Any]) -> oip.ModelInferRequest:
    """One row, one `[1, 1]` tensor per model feature (FP32 numbers, BYTES categories)."""
    request = oip.ModelInferRequest(model_name=MODEL)
    for name, value in values.items():
        tensor = request.inputs.add(name=name, shape=[1, 1])
        if name in NUMBERS:
            tensor.datatype = "FP32"
            tensor.contents.fp32_contents.append(float(value))
        else:
            tensor.datatype = "BYTES"
            tensor.contents.bytes_contents.append(str(value).encode())
    return request


async def infer(channel: grpc.aio.Channel, entity: str, seed: int) -> Call:
    values = payment_values(random.Random(seed), entity)
    stub = oip_grpc.GRPCInferenceServiceStub(channel)
    at = time.monotonic()
    try:
        reply = await stub.ModelInfer(infer_request(values), timeout=2)
    except grpc.aio.AioRpcError as error:
        return Call(at, "infer", error.code().name, entity=entity, end=time.monotonic())
    return Call(at, "infer", "OK", int(reply.model_version), entity=entity, end=time.monotonic())


async def predict(
    channel: grpc.aio.Channel, entity: str, seed: int, caller: str, *, full: bool
) -> Call:
    """Predict for one payment; `full` sends every model feature (no lookup needed),
    otherwise only the payment's own fields and the aggregates come from the store."""
    values = payment_values(random.Random(seed), entity)
    if not full:
        values = {k: values[k] for k in ("amount", "channel", "hour")}
    features = {}
    for name, value in values.items():
        if isinstance(value, str):
            features[name] = common_pb2.FeatureValue(string_value=value)
        elif isinstance(value, int):
            features[name] = common_pb2.FeatureValue(int_value=value)
        else:
            features[name] = common_pb2.FeatureValue(float_value=value)
    request = predictor_pb2.PredictRequest(
        model=MODEL,
        event_id=f"{caller}-{seed}-{'full' if full else 'lookup'}",
        entity_id=entity,
        features=features,
    )
    kind = "predict_full" if full else "predict_lookup"
    at = time.monotonic()
    try:
        reply = await predictor_pb2_grpc.PredictorStub(channel).Predict(request, timeout=2)
    except grpc.aio.AioRpcError as error:
        return Call(at, kind, error.code().name, entity=entity, end=time.monotonic())
    used = reply.features_used.get("txn_count_10m")
    count = None
    if used is not None and used.WhichOneof("kind") is not None:
        count = float(getattr(used, str(used.WhichOneof("kind"))))
    return Call(
        at,
        kind,
        "OK",
        int(reply.model_version),
        count,
        entity,
        tuple(reply.defaults_applied),
        time.monotonic(),
    )


class InferenceProbe:
    """An application calling inference every few tens of milliseconds: ModelInfer,
    Predict with every feature given, and Predict that needs the feature store."""

    def __init__(self, channel: grpc.aio.Channel, name: str) -> None:
        self._channel = channel
        self._name = name
        self.calls: list[Call] = []
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        n = 0
        while not self._stopping.is_set():
            entity = ENTITIES[n % len(ENTITIES)]
            self.calls.append(await infer(self._channel, entity, n))
            self.calls.append(await predict(self._channel, entity, n, self._name, full=True))
            self.calls.append(await predict(self._channel, entity, n, self._name, full=False))
            n += 1
            await asyncio.sleep(0.03)

    def during(
        self, start: float, end: float, kind: str, excluding: Iterable[tuple[float, float]] = ()
    ) -> Counter[str]:
        """Outcomes of `kind` calls that overlap [start, end) and none of `excluding`."""
        excluded = list(excluding)
        return Counter(
            call.outcome
            for call in self.calls
            if call.kind == kind
            and call.overlaps(start, end)
            and not any(call.overlaps(a, b) for a, b in excluded)
        )


def codes(counter: Counter[str]) -> str:
    return ", ".join(f"{code} {n}" for code, n in sorted(counter.items())) or "none"


async def read_topic(clients: Clients, topic: str) -> list[Any]:
    """Every record of `topic` up to its current end."""
    return await read_records(clients.settings, topic)
