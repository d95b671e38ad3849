"""Faults survived by the whole stack: one `driftloop up`, faults one after another.

The promises of the design notes, checked where a user would notice them: no
acknowledged event lost or counted twice (the feature store's online counts
and means against the truth computed from the acknowledged events), every
label counted once by drift, one model version per training request,
inference answering with its loaded model while its dependencies are down,
bad records dead-lettered with their origin while the partition moves on, and
replays that change nothing.

The stream is seeded: labelled card payments of twelve customers, event ids
`f-<n>`, event times in the last few minutes so every aggregate window holds
all of them. Each test records its figures (see conftest.py and `make faults`);
the assertions are outcomes and generous deadlines, never speed targets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import sqlite3
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import grpc.aio
import pytest
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
from driftloop_core.kafka.headers import make_headers
from driftloop_core.kafka.offsets import end_offsets
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from inference import grpc_service_pb2 as oip
from inference import grpc_service_pb2_grpc as oip_grpc
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

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

KILLS = "SIGKILL mid-stream under `driftloop up` (supervisor restarts)"
OUTAGES = "Inference while its dependencies are down"
POISON = "Poison records (value does not decode) on every consumed topic"
REPLAYS = "Duplicates and replays"
SIGTERM = "SIGTERM under load (inference)"


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


def difference(truth: Truth, seen: dict[str, tuple[int, float | None]]) -> Difference:
    expected = truth.counts()
    lost = twice = 0
    means_exact = True
    mismatched: dict[str, Any] = {}
    for entity in ENTITIES:
        want_count, want_mean = expected.get(entity, (0, 0.0))
        count, mean = seen.get(entity, (0, None))
        lost += max(want_count - count, 0)
        twice += max(count - want_count, 0)
        mean_differs = bool(want_count) and (mean is None or abs(mean - want_mean) > 1e-9)
        means_exact = means_exact and not mean_differs
        if count != want_count or mean_differs:
            mismatched[entity] = ((want_count, want_mean), (count, mean))
    return Difference(lost, twice, means_exact, mismatched)


@pytest.fixture(scope="module")
def source() -> EventSource:
    return EventSource()


@pytest.fixture(scope="module")
def truth() -> Truth:
    return Truth()


# ---------------------------------------------------------------------- polling


async def eventually(
    check: Callable[[], Awaitable[T | None] | T | None], timeout_s: float, what: str
) -> T:
    """Poll `check` until it returns something truthy; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        result = check()
        last = await result if asyncio.iscoroutine(result) else result
        if last:
            return last  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout_s:.0f}s waiting for {what}; last: {last!r}"
            )
        await asyncio.sleep(0.2)


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

    async def online(self) -> dict[str, tuple[int, float | None]] | None:
        """Every entity's `txn_count_10m` and `amount_mean_1h`, or None while the
        feature store does not answer."""
        stub = features_pb2_grpc.FeatureServiceStub(self.channel("features"))
        try:
            reply = await stub.GetOnlineFeatures(
                features_pb2.GetOnlineFeaturesRequest(
                    entity_ids=ENTITIES, feature_names=["txn_count_10m", "amount_mean_1h"]
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

    async def exact(self, truth: Truth) -> Difference | None:
        """The difference from the truth (true when there is none), None while the
        feature store does not answer."""
        seen = await self.online()
        return None if seen is None else difference(truth, seen)

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


def watch(stack: Any, kill: Any) -> asyncio.Task[float]:
    """Start timing a killed service's return to SERVING at once."""
    return asyncio.create_task(stack.healthy_again(kill))


def started_pattern(request_id: str) -> str:
    return r'"training_started"[^{}]*' + request_id


# ---------------------------------------------------------------------- SIGKILL


async def test_sigkill_of_each_service_loses_nothing_and_counts_nothing_twice(
    stack: Any, source: EventSource, truth: Truth, figures: Any
) -> None:
    """Each of the six services is killed with SIGKILL in the middle of its work
    (the registry as a training run starts, so the model arrives while it is
    down; the trainer during a run; ingestion and drift in a stream; the feature
    store and inference while an application calls inference) and restarted by
    the supervisor. The stream's events, labels and training requests all end
    up counted exactly once, and inference answers with its loaded model while
    the registry or the feature store is down."""
    figures.row(
        KILLS, service="(stack)", fault="driftloop up until all ready", healthy_s=stack.ready_s
    )
    async with Clients(stack) as clients:
        await clients.follow(
            Topics.MODELS_TRAINED, Topics.MODELS_REGISTERED, Topics.TRAINING_FAILED
        )

        # A labelled history, in the offline log, then the first training run.
        history = source.take(300)
        await clients.raw(history, truth)
        await eventually(lambda: clients.exact(truth), 30, "the history counted online")
        await eventually(
            lambda: _at_least(clients.training_rows(), len(history)), 30, "the offline log"
        )

        # Everything this part sends, once acknowledged: what the stack must end
        # up holding. Recovery is timed against it from each kill.
        stream = source.take(400)
        target = Truth()
        target.acknowledged(history + stream)

        def timed(kill: Any, check: Callable[[], Any], what: str) -> asyncio.Task[float]:
            return asyncio.create_task(seconds_until(check, kill.at, 120, what))

        # The registry dies as the first run starts: its model is published while
        # the registry is down, and must be registered once it is back.
        first = await clients.request_training("fault suite: first model")
        await eventually(lambda: stack.logged(started_pattern(first)), 30, "the first run")
        registry_kill = await stack.kill("registry")
        healthy = {"registry": watch(stack, registry_kill)}
        caught_up = {
            "registry": timed(registry_kill, lambda: clients.registered(first), "version 1")
        }
        await eventually(lambda: clients.trained(first), 90, "the first model trained")
        first_published_s = time.monotonic() - registry_kill.at

        second = await clients.request_training("fault suite: second model")
        await eventually(lambda: stack.logged(started_pattern(second)), 30, "the second run")
        trainer_mid_run = not clients.trained(second)
        trainer_kill = await stack.kill("trainer")
        healthy["trainer"] = watch(stack, trainer_kill)
        caught_up["trainer"] = timed(trainer_kill, lambda: clients.registered(second), "version 2")

        # The stream: half on events.raw, half through IngestStream in chunks of 20;
        # ingestion is killed a quarter in, drift half-way.
        on_topic, on_grpc = stream[0::2], stream[1::2]
        sent = [0]
        kills: dict[str, Any] = {}

        def drift_counted() -> bool:
            return clients.drift_labels() == target.labelled

        outcome = {
            "ingestion": (lambda: clients.exact(target), "exact online counts"),
            "drift": (drift_counted, "every label counted by drift"),
        }

        async def kill_when(service: str, at: int) -> None:
            await eventually(lambda: sent[0] >= at, 30, f"{at} events sent")
            kills[service] = kill = await stack.kill(service)
            healthy[service] = watch(stack, kill)
            caught_up[service] = timed(kill, *outcome[service])

        _, ingest_figures, _, _ = await asyncio.gather(
            clients.raw(on_topic, truth, pause_every=10, pause_s=0.1, sent=sent),
            clients.ingest(on_grpc, truth, pause_s=0.1),
            kill_when("ingestion", len(on_topic) // 4),
            kill_when("drift", len(on_topic) // 2),
        )
        assert truth.events.keys() == target.events.keys(), "every event acknowledged"
        healthy_s = {name: await task for name, task in healthy.items()}
        caught_up_s = {name: await task for name, task in caught_up.items()}

        versions = await clients.versions()
        by_request = Counter(v.request_id for v in versions)
        failed = [
            m.request_id for m in clients.decoded(Topics.TRAINING_FAILED, events_pb2.TrainingFailed)
        ]
        diff = await clients.compare(truth)
        assert diff is not None
        labels = clients.drift_labels()
        figures.row(
            KILLS,
            service="ingestion",
            fault="SIGKILL at 1/4 of a 400-event stream",
            sent=len(stream),
            acked=len(on_topic) + ingest_figures.accepted,
            lost=diff.lost,
            twice=diff.twice,
            healthy_s=healthy_s["ingestion"],
            caught_up_s=caught_up_s["ingestion"],
            notes=f"IngestStream calls failed and sent again {ingest_figures.retried_calls}; "
            f"events answered as duplicates {ingest_figures.duplicates}",
        )
        figures.row(
            KILLS,
            service="drift",
            fault="SIGKILL at 1/2 of the same stream",
            sent=truth.labelled,
            acked=truth.labelled,
            lost=max(truth.labelled - labels, 0),
            twice=max(labels - truth.labelled, 0),
            healthy_s=healthy_s["drift"],
            caught_up_s=caught_up_s["drift"],
            notes="labels counted in drift's saved state",
        )
        figures.row(
            KILLS,
            service="registry",
            fault="SIGKILL as the first training run starts",
            sent=1,
            acked=1,
            lost=0 if by_request[first] else 1,
            twice=max(by_request[first] - 1, 0),
            healthy_s=healthy_s["registry"],
            caught_up_s=caught_up_s["registry"],
            notes=f"model versions for the request; its ModelTrained published "
            f"{first_published_s:.1f}s after the kill",
        )
        figures.row(
            KILLS,
            service="trainer",
            fault="SIGKILL as the second run starts"
            + (" (mid-run)" if trainer_mid_run else " (the run had finished)"),
            sent=1,
            acked=1,
            lost=0 if by_request[second] else 1,
            twice=max(by_request[second] - 1, 0),
            healthy_s=healthy_s["trainer"],
            caught_up_s=caught_up_s["trainer"],
            notes="model versions for the request",
        )
        assert diff.exact, diff
        assert labels == truth.labelled
        assert by_request[first] == 1 and by_request[second] == 1, by_request
        assert max(by_request.values()) == 1, f"a request registered twice: {by_request}"
        assert sorted(v.version for v in versions) == list(range(1, len(versions) + 1))
        assert first not in failed and second not in failed, failed

        # Inference, its feature store and its registry: an application keeps calling.
        champion = await eventually(clients.champion, 30, "a champion")
        await eventually(
            lambda: _is(clients.served_version(), champion), 60, f"inference serving v{champion}"
        )
        probe = InferenceProbe(clients.channel("inference"), "probe-kills")
        probe.start()
        await asyncio.sleep(1.0)

        outage = source.take(100)
        target.acknowledged(outage)
        features_kill = await stack.kill("features")
        features_back = watch(stack, features_kill)
        features_counted = timed(
            features_kill, lambda: clients.exact(target), "exact counts after the outage"
        )
        outage_write = asyncio.create_task(clients.raw(outage, truth, pause_every=10, pause_s=0.15))
        await asyncio.sleep(0.5)
        registry_kill_2 = await stack.kill("registry")
        registry_2_s = await stack.healthy_again(registry_kill_2)
        registry_2_end = time.monotonic()
        await asyncio.sleep(0.5)
        inference_kill = await stack.kill("inference")
        inference_s = await stack.healthy_again(inference_kill)
        inference_ready_s = await seconds_until(
            lambda: _is(clients.served_version(), champion),
            inference_kill.at,
            60,
            f"inference serving v{champion} again",
        )
        inference_end = inference_kill.at + inference_ready_s
        await outage_write
        features_s = await features_back
        features_end = features_kill.at + features_s
        features_counted_s = await features_counted
        expected = target.counts()

        def fresh() -> list[Call]:
            """Predict answers, after the store is back, with every event counted."""
            return [
                call
                for call in probe.calls
                if call.kind == "predict_lookup"
                and call.code == "OK"
                and call.at > features_end
                and call.txn_count == expected[call.entity][0]
            ]

        await eventually(fresh, 60, "Predict with fresh features")
        fresh_s = fresh()[0].end - features_kill.at
        await probe.stop()
        diff = await clients.compare(truth)
        assert diff is not None

    inference_down = [(inference_kill.at, inference_end)]
    in_features_outage = {
        kind: probe.during(features_kill.at, features_end, kind, inference_down)
        for kind in ("infer", "predict_full", "predict_lookup")
    }
    in_registry_outage = probe.during(registry_kill_2.at, registry_2_end, "infer", inference_down)
    in_inference_outage = probe.during(inference_kill.at, inference_end, "infer")
    fresh_at = features_kill.at + fresh_s
    # Outside the outages every call is answered; Predict needing a lookup is out
    # until inference reaches the restarted feature store again.
    elsewhere = Counter(
        call.outcome
        for call in probe.calls
        if not any(call.overlaps(a, b) for a, b in inference_down)
        and not (call.kind == "predict_lookup" and call.overlaps(features_kill.at, fresh_at))
    )
    served = Counter(call.version for call in probe.calls if call.code == "OK")
    figures.row(
        KILLS,
        service="features",
        fault="SIGKILL while 100 events stream in",
        sent=len(outage),
        acked=len(outage),
        lost=diff.lost,
        twice=diff.twice,
        healthy_s=features_s,
        caught_up_s=features_counted_s,
        notes=f"Predict answered with fresh features {fresh_s:.1f}s after the kill",
    )
    figures.row(
        KILLS,
        service="registry",
        fault="SIGKILL again, inference serving",
        healthy_s=registry_2_s,
        notes=f"ModelInfer meanwhile: {codes(in_registry_outage)}",
    )
    figures.row(
        KILLS,
        service="inference",
        fault="SIGKILL while an application calls it",
        healthy_s=inference_s,
        caught_up_s=inference_ready_s,
        notes=f"ModelInfer meanwhile: {codes(in_inference_outage)} (one replica)",
    )
    figures.row(
        OUTAGES,
        outage=f"feature store down {features_s:.1f}s",
        ModelInfer=codes(in_features_outage["infer"]),
        Predict_all_features_given=codes(in_features_outage["predict_full"]),
        Predict_needing_lookup=codes(in_features_outage["predict_lookup"]),
    )
    figures.row(
        OUTAGES,
        outage=f"registry down {registry_2_s:.1f}s",
        ModelInfer=codes(in_registry_outage),
        Predict_all_features_given=codes(
            probe.during(registry_kill_2.at, registry_2_end, "predict_full", inference_down)
        ),
        Predict_needing_lookup="(feature store down too)",
    )
    figures.row(
        OUTAGES,
        outage="(versions answered over the whole run)",
        ModelInfer=", ".join(f"v{v} {n}" for v, n in sorted(served.items(), key=str)),
    )
    assert diff.exact, diff
    # While the registry or the feature store is down, the loaded model answers.
    assert in_features_outage["infer"] and set(in_features_outage["infer"]) == {"OK"}
    assert set(in_features_outage["predict_full"]) == {"OK"}
    assert in_registry_outage and set(in_registry_outage) == {"OK"}
    # A lookup the store cannot answer fails with UNAVAILABLE (documented), never
    # a prediction on defaults standing in for features the store holds.
    assert set(in_features_outage["predict_lookup"]) <= {"OK", "UNAVAILABLE"}
    assert set(elsewhere) == {"OK"}, elsewhere
    assert set(served) == {champion}


async def _is(value: Awaitable[T], expected: T) -> bool:
    return await value == expected


async def _at_least(value: Awaitable[int], floor: int) -> bool:
    return await value >= floor


# ---------------------------------------------------------------------- SIGTERM


async def test_sigterm_under_load_drains_inference_without_a_failed_call(
    stack: Any, figures: Any
) -> None:
    """Sixteen callers keep inference busy; SIGTERM. Its health turns NOT_SERVING
    first, every call in flight finishes, none fails (the callers stop sending once
    they see NOT_SERVING, as a load balancer does), and the supervisor starts it
    again."""
    async with Clients(stack) as clients:
        version = await eventually(clients.served_version, 60, "inference serving a model")
        target = stack.endpoints.inference
        channels = [grpc.aio.insecure_channel(target, options=CLIENT_OPTIONS) for _ in range(4)]
        health = health_pb2_grpc.HealthStub(clients.channel("inference"))
        draining = asyncio.Event()
        seen: dict[str, float] = {}
        calls: list[Call] = []

        async def caller(i: int) -> None:
            n = 0
            while not draining.is_set():
                calls.append(await infer(channels[i % 4], ENTITIES[i % 12], 10_000 * i + n))
                n += 1

        async def watch_health() -> None:
            while True:
                try:
                    reply = await health.Check(
                        health_pb2.HealthCheckRequest(service=OIP_SERVICE), timeout=1
                    )
                except grpc.aio.AioRpcError as error:
                    seen["error"] = time.monotonic()
                    seen[error.code().name] = seen["error"]
                    draining.set()
                    return
                if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    seen["not_serving"] = time.monotonic()
                    draining.set()
                    return
                await asyncio.sleep(0.01)

        try:
            callers = [asyncio.create_task(caller(i)) for i in range(16)]
            watcher = asyncio.create_task(watch_health())
            await asyncio.sleep(1.0)
            kill = await stack.kill("inference", signal.SIGTERM)
            await asyncio.wait_for(watcher, 20)
            await asyncio.wait_for(asyncio.gather(*callers), 20)
            back_s = await stack.healthy_again(kill)
            ready_s = await seconds_until(
                lambda: _is(clients.served_version(), version),
                kill.at,
                60,
                f"inference serving v{version} again",
            )
        finally:
            for channel in channels:
                await channel.close()

    in_flight = [c for c in calls if c.at < kill.at < c.end]
    after_signal = [c for c in calls if c.at >= kill.at]
    failed = Counter(c.code for c in calls if c.code != "OK")
    exit_logged = stack.logged(r"inference \| exited with code 0 ")
    figures.row(
        SIGTERM,
        calls=len(calls),
        in_flight_at_signal=len(in_flight),
        started_after_signal=len(after_signal),
        failed=sum(failed.values()),
        not_serving_after_s=seen.get("not_serving", seen.get("error", kill.at)) - kill.at,
        exit_code_0=exit_logged,
        healthy_s=back_s,
        serving_again_s=ready_s,
    )
    assert "not_serving" in seen, f"the port closed before health said NOT_SERVING: {seen}"
    assert in_flight, "SIGTERM landed while calls were in flight"
    assert not failed, failed
    assert exit_logged, "inference exits 0 after a SIGTERM"


# ---------------------------------------------------------------------- poison


@dataclass(frozen=True)
class Poison:
    topic: str
    key: str
    ce_type: str | None
    value: bytes
    consumers: tuple[str, ...]


# A protobuf value that does not decode as any message ("wire format was corrupt").
GARBAGE = b"\xff\xff\xff\xff"


def poisons(entity: str) -> list[Poison]:
    """One poison per consumed topic, keyed as that topic's records are (entity or
    model), with the CloudEvents type its consumers expect."""
    protobuf = [
        (Topics.VALID, entity, "driftloop.event.observed.v1", ("features", "drift")),
        (Topics.FEATURES_OFFLINE, entity, "driftloop.features.row.v1", ("features",)),
        (Topics.PREDICTIONS, entity, "driftloop.prediction.made.v1", ("drift",)),
        (Topics.MODELS_TRAINED, MODEL, "driftloop.model.trained.v1", ("registry",)),
        (Topics.TRAINING_REQUESTED, MODEL, "driftloop.training.requested.v1", ("trainer",)),
        (Topics.MODELS_PROMOTED, MODEL, "driftloop.model.promoted.v1", ("drift", "inference")),
        (Topics.MODELS_REGISTERED, MODEL, "driftloop.model.registered.v1", ("drift",)),
        (Topics.TRAINING_FAILED, MODEL, "driftloop.training.failed.v1", ("drift",)),
    ]
    return [
        Poison(Topics.RAW, entity, None, b"{not json", ("ingestion",)),
        *(Poison(t, key, kind, GARBAGE, consumers) for t, key, kind, consumers in protobuf),
    ]


async def test_poison_on_every_consumed_topic_is_dead_lettered_and_the_partition_moves_on(
    stack: Any, source: EventSource, truth: Truth, figures: Any
) -> None:
    """A record whose value does not decode, on each topic a service consumes,
    keyed like the records around it. Each consumer dead-letters it with a
    reason and its source topic/partition/offset, valid records after it on the
    same partition are handled (a payment is counted, a promotion is served),
    and every consumer's lag returns to zero."""
    entity = ENTITIES[3]
    async with Clients(stack) as clients:
        await clients.follow(Topics.DEADLETTER)
        placed: dict[Poison, tuple[int, int]] = {}
        for poison in poisons(entity):
            headers = (
                []
                if poison.ce_type is None
                else make_headers(
                    poison.ce_type, "/faults", event_id=f"poison-{poison.topic}"
                ).to_kafka()
            )
            placed[poison] = await clients.publish_raw(
                poison.topic, poison.value, poison.key.encode(), headers
            )

        # Valid records behind the poison, on the same partitions.
        after = source.take(1)
        after[0]["customer_id"] = entity
        await clients.raw(after, truth)
        versions = await clients.versions()
        champion = await clients.champion()
        other = next(v.version for v in versions if v.version != champion)
        registry = registry_pb2_grpc.RegistryServiceStub(clients.channel("registry"))
        await registry.Promote(
            registry_pb2.PromoteRequest(
                model=MODEL, version=other, reason="fault suite: after a poison", actor="faults"
            ),
            timeout=10,
        )

        def letters_for(poison: Poison) -> dict[str, events_pb2.DeadLetter]:
            partition, offset = placed[poison]
            return {
                letter.service: letter
                for letter in clients.dead_letters()
                if (letter.source_topic, letter.source_partition, letter.source_offset)
                == (poison.topic, partition, offset)
            }

        def all_dead_lettered() -> bool:
            return all(set(p.consumers) <= set(letters_for(p)) for p in placed)

        async def lags() -> Lags:
            found = Lags()
            for poison in placed:
                for consumer in poison.consumers:
                    if consumer == "drift":
                        found[f"drift {poison.topic}"] = await clients.drift_lag(poison.topic)
                    elif consumer != "inference":  # no committed position: see the promotion
                        group = GROUPS[poison.topic]
                        found[f"{consumer} {poison.topic}"] = await clients.lag(group, poison.topic)
            return found

        # Every check runs, so the figures show each consumer even when one fails.
        checks = [
            (all_dead_lettered, "every poison dead-lettered by its consumers"),
            (lambda: clients.exact(truth), "the payment after the poison counted"),
            (lambda: _is(clients.served_version(), other), f"v{other} served after the poison"),
            (lags, "every consumer's lag back to zero"),
        ]
        problems: list[str] = []
        started = time.monotonic()
        for check, what in checks:
            try:
                await eventually(check, 60, what)
            except AssertionError as error:
                problems.append(str(error))
        settled_s = time.monotonic() - started
        last_lags = await lags()

    for poison, (partition, offset) in placed.items():
        found = letters_for(poison)
        for consumer in poison.consumers:
            letter = found.get(consumer)
            figures.row(
                POISON,
                topic=poison.topic,
                consumer=consumer,
                at=f"{partition}/{offset}",
                dead_lettered="yes" if letter else "NO",
                rule=letter.rule if letter else None,
                reason=(letter.reason[:60] if letter else None),
                lag_after="-"
                if consumer == "inference"
                else last_lags.total(consumer, poison.topic),
            )
    figures.row(POISON, topic="(all)", consumer="settled", at=f"{settled_s:.1f}s")
    assert not problems, problems
    for poison in placed:
        for letter in letters_for(poison).values():
            assert letter.reason and letter.payload == poison.value, letter
            assert letter.key == poison.key.encode()


# ---------------------------------------------------------------------- replays


async def read_topic(clients: Clients, topic: str) -> list[Any]:
    """Every record of `topic` up to its current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=clients.stack.bootstrap, group_id=None)
    await consumer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        ends = await end_offsets(clients.settings.kafka, consumer, tps)
        await consumer.seek_to_beginning(*tps)
        records: list[Any] = []

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in tps])

        while await behind():
            for messages in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(messages)
        return [r for r in records if r.offset < ends[TopicPartition(topic, r.partition)]]
    finally:
        await consumer.stop()


def decodes(record: Any, message: Any) -> bool:
    try:
        message.FromString(record.value or b"")
    except DecodeError:
        return False
    return bool(record.value)


async def test_duplicates_and_replays_change_nothing(
    stack: Any, truth: Truth, figures: Any
) -> None:
    """The same event ids again (on events.raw and through IngestStream), every
    record of events.valid again (what a rewound feature store or drift reads),
    and the training requests, trained models and latest promotion again: no
    count, label, training row, model version or served version changes."""
    acknowledged = list(truth.events.values())
    async with Clients(stack) as clients:
        valid_before = await read_topic(clients, Topics.VALID)
        versions_before = [(v.version, v.request_id) for v in await clients.versions()]
        served_before = await clients.served_version()
        await eventually(
            lambda: _is(clients.training_rows(), len(truth.events)), 30, "one row per event"
        )
        labels_before = clients.drift_labels()
        replayed_before = clients.metric(
            "trainer", "driftloop_trainer_runs_total", outcome="replayed"
        )
        trained_before = clients.metric(
            "trainer", "driftloop_trainer_runs_total", outcome="trained"
        )
        assert await clients.exact(truth)

        # The same events again: ingestion acknowledges them as duplicates.
        await clients.raw(acknowledged[:300], None)
        again = await clients.ingest(acknowledged[300:400], None, chunk=100)

        async def raw_consumed() -> bool:
            return not any((await clients.lag(GROUPS[Topics.RAW], Topics.RAW)).values())

        await eventually(raw_consumed, 60, "ingestion through the replayed events")
        valid_after_raw = await read_topic(clients, Topics.VALID)

        # What a rewound consumer reads: every valid record of events.valid again,
        # and the lifecycle records the trainer, registry and inference act on.
        copies = {
            Topics.VALID: [
                r for r in valid_before
                if decodes(r, events_pb2.Observation) or decodes(r, events_pb2.Label)
            ],
            Topics.TRAINING_REQUESTED: [
                r for r in await read_topic(clients, Topics.TRAINING_REQUESTED)
                if decodes(r, events_pb2.TrainingRequested)
            ],
            Topics.MODELS_TRAINED: [
                r for r in await read_topic(clients, Topics.MODELS_TRAINED)
                if decodes(r, events_pb2.ModelTrained)
            ],
            Topics.MODELS_PROMOTED: [
                r for r in await read_topic(clients, Topics.MODELS_PROMOTED)
                if decodes(r, events_pb2.ModelPromoted)
            ][-1:],
        }  # fmt: skip
        for topic, records in copies.items():
            for record in records:
                await clients.publish_raw(
                    topic, record.value, record.key, list(record.headers or ())
                )

        async def all_consumed() -> Lags:
            lags = Lags()
            for topic in (
                Topics.VALID,
                Topics.FEATURES_OFFLINE,  # the rows the replays publish again
                Topics.TRAINING_REQUESTED,
                Topics.MODELS_TRAINED,
            ):
                lags[f"{GROUPS[topic]} {topic}"] = await clients.lag(GROUPS[topic], topic)
            for topic in (Topics.VALID, Topics.MODELS_PROMOTED):
                lags[f"drift {topic}"] = await clients.drift_lag(topic)
            return lags

        started = time.monotonic()
        await eventually(all_consumed, 60, "every replayed record consumed")
        consumed_s = time.monotonic() - started
        diff = await clients.compare(truth)
        versions_after = [(v.version, v.request_id) for v in await clients.versions()]
        served_after = await clients.served_version()
        rows_after = await clients.training_rows()
        labels_after = clients.drift_labels()
        replayed = (
            clients.metric("trainer", "driftloop_trainer_runs_total", outcome="replayed")
            - replayed_before
        )
        trained = (
            clients.metric("trainer", "driftloop_trainer_runs_total", outcome="trained")
            - trained_before
        )

    figures.row(
        REPLAYS,
        replayed="300 events again on events.raw",
        records=300,
        expected="no new events.valid record",
        observed=f"events.valid +{len(valid_after_raw) - len(valid_before)}",
    )
    figures.row(
        REPLAYS,
        replayed="100 events again through IngestStream",
        records=100,
        expected="all acknowledged as duplicates",
        observed=f"accepted {again.accepted}, duplicates {again.duplicates}",
    )
    figures.row(
        REPLAYS,
        replayed="events.valid again (rewound consumers)",
        records=len(copies[Topics.VALID]),
        expected="counts, labels, rows unchanged",
        observed=f"lost {diff.lost if diff is not None else '?'}, "
        f"twice {diff.twice if diff is not None else '?'}; "
        f"drift labels {labels_before}->{labels_after}; rows {len(truth.events)}->{rows_after}",
    )
    figures.row(
        REPLAYS,
        replayed="training.requested again",
        records=len(copies[Topics.TRAINING_REQUESTED]),
        expected="no run, no version",
        observed=f"runs replayed +{replayed:.0f}, trained +{trained:.0f}",
    )
    figures.row(
        REPLAYS,
        replayed="models.trained again",
        records=len(copies[Topics.MODELS_TRAINED]),
        expected="no new version",
        observed=f"versions {len(versions_before)}->{len(versions_after)}",
    )
    figures.row(
        REPLAYS,
        replayed="latest models.promoted again",
        records=len(copies[Topics.MODELS_PROMOTED]),
        expected="same version served",
        observed=f"v{served_before} -> v{served_after}",
    )
    figures.row(REPLAYS, replayed="(all consumed)", observed=f"{consumed_s:.1f}s")
    assert len(valid_after_raw) == len(valid_before), "a duplicate event was published again"
    assert (again.accepted, again.duplicates) == (100, 100)
    assert diff is not None and diff.exact, diff
    assert labels_after == labels_before == truth.labelled
    assert rows_after == len(truth.events), "the offline log keeps one row per event"
    assert versions_after == versions_before
    assert served_after == served_before
    assert trained == 0 and replayed == len(copies[Topics.TRAINING_REQUESTED])
