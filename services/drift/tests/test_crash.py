"""SIGKILL the drift service mid-stream: after the restart every label counts once,
nothing is asked twice, and the drift found is the one a run without a crash finds.

The service runs as its own process (`python -m driftloop_drift`, as `driftloop
up` starts it) on the session's embedded broker, with DRIFTLOOP_HOME under the
test's folder, its own source topics and model name, and no registry (so only
the performance detector runs). The stream: labelled observations alone until
the bootstrap request, the promotion of v1, then 3000 predictions whose error
rate rises from 10% to 50% halfway, then their labels, trickled. The process is
killed with SIGKILL once its saved state has counted a few hundred of those
labels and before the drift (half a snapshot interval after a snapshot, while
labels keep coming: it dies with labels read but not saved); the rest is
published while it is down, and a new process finishes the stream.

The expected outcome is an in-process `DriftEngine` fed the same stream with no
crash: predictions are all consumed before their labels, and each source is one
partition, so the engine sees one order of inputs whatever the batching.

The service exports no counter of labels or joins (its Prometheus metrics count
detections and requests, and restart at zero with the process), so the label
and error-stream counts are read from its SQLite state file
(`$DRIFTLOOP_HOME/ephemeral/drift/<model>.sqlite`, the `state` row's JSON) the
way an operator would. Requests and detections are read from the topics, where
a user sees them. Delivery is at least once with stable ids (the outbox
publishes again under the same `ce_id` after a crash), so a request may appear
twice with the same id and the same payload, never under another id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from driftloop.v1 import events_pb2
from driftloop_core.broker import free_port
from driftloop_core.featureset import FeatureSet, default_featureset_path, load_featureset
from driftloop_core.grpc.health_probe import probe
from driftloop_core.kafka import Outgoing, Publisher, Topics
from driftloop_core.settings import Settings
from driftloop_drift.config import DriftSettings
from driftloop_drift.domain.join import LabelSeen, PredictionSeen
from driftloop_drift.handlers import DriftEngine
from google.protobuf.message import Message
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration

T0_MS = 1_763_800_000_000
BOOT = 60  # labelled observations before any model
EVENTS = 3000  # predictions of v1, then their labels
CHANGE = 1500  # the error rate rises from 10% to 50% at this event
KILL_AFTER = 300  # labels of the stream in the saved state when the process is killed
TRICKLE = 25  # labels per send while the first process runs, one send every 50 ms
HOLD_AT = 1200  # labels of the stream sent before the kill at most: the drift comes later

T = TypeVar("T")


# ---------------------------------------------------------------------- the stream


def observation(model: str, event_id: str, label: int, t_ms: int) -> events_pb2.Observation:
    message = events_pb2.Observation(
        event_id=event_id, entity_id="c1", label=label, feature_set=model
    )
    message.event_time.FromMilliseconds(t_ms)
    return message


def prediction(model: str, event_id: str, predicted: int, t_ms: int) -> events_pb2.Prediction:
    message = events_pb2.Prediction(
        event_id=event_id, entity_id="c1", model=model, model_version=1, label=predicted
    )
    message.event_time.FromMilliseconds(t_ms)
    return message


class Scenario:
    """The seeded stream, as protobuf messages."""

    def __init__(self, model: str, seed: int = 7) -> None:
        self.model = model
        self.boot = [observation(model, f"boot{i}", i % 2, T0_MS + i) for i in range(BOOT)]
        rng = np.random.default_rng(seed)
        self.predictions: list[events_pb2.Prediction] = []
        self.labels: list[events_pb2.Observation] = []
        for i in range(EVENTS):
            truth = int(rng.uniform() < 0.3)
            wrong = rng.uniform() < (0.1 if i < CHANGE else 0.5)
            t_ms = T0_MS + 10_000 + i * 100
            self.predictions.append(prediction(model, f"e{i}", 1 - truth if wrong else truth, t_ms))
            self.labels.append(observation(model, f"e{i}", truth, t_ms))
        self.promoted = events_pb2.ModelPromoted(
            promotion_id=f"p-{model}", model=model, to_version=1, alias="champion"
        )


def label_seen(message: events_pb2.Observation) -> LabelSeen:
    return LabelSeen(
        message.event_id, message.feature_set, message.label, message.event_time.ToMilliseconds()
    )


def prediction_seen(message: events_pb2.Prediction) -> PredictionSeen:
    return PredictionSeen(
        message.event_id,
        message.model,
        message.model_version,
        message.label,
        message.event_time.ToMilliseconds(),
    )


def without_crash(
    scenario: Scenario, featureset: FeatureSet, config: DriftSettings
) -> tuple[DriftEngine, list[Message]]:
    """The same stream through one engine that never stops, in the service's order."""
    engine = DriftEngine(featureset, config.engine_config())
    now = T0_MS
    out: list[Message] = []
    for message in scenario.boot:
        now += 1
        out.extend(engine.on_label(label_seen(message), now).events)
    engine.on_promoted(1, None, now)
    for served in scenario.predictions:
        now += 1
        out.extend(engine.on_prediction(prediction_seen(served), now).events)
    for message in scenario.labels:
        now += 1
        out.extend(engine.on_label(label_seen(message), now).events)
    return engine, out


def comparable(message: Message) -> Message:
    """The message without the service time it was decided at (record timestamps)."""
    copy = type(message)()
    copy.CopyFrom(message)
    for field in ("requested_at", "detected_at"):
        if field in copy.DESCRIPTOR.fields_by_name:
            copy.ClearField(field)
    return copy


# ---------------------------------------------------------------------- the process


class DriftProcess:
    """`python -m driftloop_drift` with the environment `driftloop up` would give it."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.health = env["DRIFTLOOP_ENDPOINTS__DRIFT"]
        self.metrics_url = f"http://127.0.0.1:{env['DRIFTLOOP_METRICS_PORT']}/metrics"
        self.log_path = log_path
        self._log = log_path.open("a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "driftloop_drift"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def tail(self) -> str:
        return self.log_path.read_text()[-3000:]

    async def ready(self, settings: Settings, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not await asyncio.to_thread(probe, self.health, "", 1.0, settings):
            assert self.process.poll() is None, f"the drift service exited:\n{self.tail()}"
            assert time.monotonic() < deadline, f"the drift service is not ready:\n{self.tail()}"
            await asyncio.sleep(0.2)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as reply:
            text = reply.read().decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    async def kill(self) -> int:
        self.process.send_signal(signal.SIGKILL)
        return await asyncio.to_thread(self.process.wait, 10)

    async def terminate(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.process.wait, 20)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


def service_env(settings: Settings, featureset_path: Path, config: DriftSettings) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DRIFTLOOP_")}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "DRIFTLOOP_HOME": str(settings.home),
            "DRIFTLOOP_KAFKA_BOOTSTRAP": settings.kafka.bootstrap_servers,
            "DRIFTLOOP_FEATURESET": str(featureset_path),
            "DRIFTLOOP_ENDPOINTS__DRIFT": f"127.0.0.1:{free_port()}",
            # Nothing listens there: the registry is "down".
            "DRIFTLOOP_ENDPOINTS__REGISTRY": f"127.0.0.1:{free_port()}",
            "DRIFTLOOP_METRICS_PORT": str(free_port()),
        }
    )
    for name, value in config.model_dump(exclude_defaults=True).items():
        env[f"DRIFTLOOP_DRIFT_{name.upper()}"] = str(value)
    return env


def saved_state(path: Path) -> dict[str, Any] | None:
    """The engine state the service last saved, as `sqlite3 <file>` shows it."""
    if not path.exists():
        return None
    with contextlib.closing(sqlite3.connect(str(path), timeout=5)) as db:
        row = db.execute("SELECT data FROM state WHERE id = 1").fetchone()
    return None if row is None else dict(json.loads(row[0]))


def outbox_size(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(str(path), timeout=5)) as db:
        return int(db.execute("SELECT count(*) FROM outbox").fetchone()[0])


def labels_counted(state: dict[str, Any] | None) -> int:
    return 0 if state is None else int(state["labels"]["total"])


def waiting_predictions(path: Path) -> int:
    state = saved_state(path)
    return 0 if state is None else len(state["join"]["predictions"])


def counted_at_least(path: Path, labels: int) -> dict[str, Any] | None:
    """The saved state once it has counted `labels` labels, else None."""
    state = saved_state(path)
    return state if labels_counted(state) >= labels else None


async def eventually(
    check: Callable[[], T | None], what: str, timeout_s: float = 30.0, state: Path | None = None
) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() >= deadline:
            counted = (
                "" if state is None else f"; labels saved: {labels_counted(saved_state(state))}"
            )
            raise AssertionError(f"timed out waiting for {what}{counted}")
        await asyncio.sleep(0.1)


# ---------------------------------------------------------------------- the outputs


class Outputs:
    """Every `drift.detected` and `training.requested` record of one model, as published."""

    def __init__(self, settings: Settings, model: str) -> None:
        self._consumer = AIOKafkaConsumer(
            **settings.kafka.client_options(), enable_auto_commit=False
        )
        self._model = model.encode()
        self.drifts: list[tuple[str, bytes]] = []
        self.requests: list[tuple[str, bytes]] = []

    async def start(self) -> None:
        await self._consumer.start()
        await self._consumer.topics()
        tps = [
            TopicPartition(topic, p)
            for topic in (Topics.DRIFT_DETECTED, Topics.TRAINING_REQUESTED)
            for p in self._consumer.partitions_for_topic(topic) or ()
        ]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)

    async def poll(self, seconds: float = 0.0) -> None:
        deadline = time.monotonic() + seconds
        while True:
            for messages in (await self._consumer.getmany(timeout_ms=100)).values():
                for m in messages:
                    if m.key != self._model:
                        continue
                    ce_id = dict(m.headers)["ce_id"].decode()
                    mine = self.drifts if m.topic == Topics.DRIFT_DETECTED else self.requests
                    mine.append((ce_id, m.value))
            if time.monotonic() >= deadline:
                return

    async def until(self, check: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await self.poll(0.3)

    async def stop(self) -> None:
        await self._consumer.stop()


def decoded(records: list[tuple[str, bytes]], cls: type[Any]) -> dict[str, Any]:
    """One message per id; every copy of an id must be the same record (a replay)."""
    by_id: dict[str, bytes] = {}
    for ce_id, value in records:
        assert by_id.setdefault(ce_id, value) == value, f"{ce_id} published with another payload"
    return {ce_id: cls.FromString(value) for ce_id, value in by_id.items()}


# ---------------------------------------------------------------------- the test


@pytest.fixture
def config(unique: str, kit: Any) -> DriftSettings:
    # The scenario's drift is in the inputs alone: it asks for training only with this.
    return kit.drift_settings(unique, snapshot_interval_s=1.0, data_drift_retrains=True)


@pytest.fixture
async def publisher(settings: Settings) -> AsyncIterator[Publisher]:
    async with Publisher(settings) as running:
        yield running


def to(topic: str, messages: list[Any]) -> list[Outgoing]:
    return [
        Outgoing(topic, o.value, o.key, o.ce_type, o.event_id, o.content_type)
        for o in (Outgoing.event(message, key="c1") for message in messages)
    ]


async def test_sigkill_mid_stream_counts_every_label_once_and_finds_the_same_drift(
    settings: Settings,
    config: DriftSettings,
    publisher: Publisher,
    unique: str,
    tmp_path: Path,
) -> None:
    model = f"m{unique}"
    yaml = default_featureset_path().read_text().replace("name: payments", f"name: {model}", 1)
    featureset_path = tmp_path / f"{model}.yaml"
    featureset_path.write_text(yaml)
    featureset = load_featureset(featureset_path)
    assert featureset.name == model
    scenario = Scenario(model)
    reference, expected_out = without_crash(scenario, featureset, config)
    expected_requests = {
        m.request_id: m for m in expected_out if isinstance(m, events_pb2.TrainingRequested)
    }
    expected_drifts = {
        m.drift_id: m for m in expected_out if isinstance(m, events_pb2.DriftDetected)
    }
    triggers = sorted(m.trigger for m in expected_requests.values())
    assert triggers == [events_pb2.TRAINING_TRIGGER_BOOTSTRAP, events_pb2.TRAINING_TRIGGER_DRIFT]
    assert expected_drifts, "the stream has a drift to find"

    state_file = settings.home / "ephemeral" / "drift" / f"{model}.sqlite"
    log_path = tmp_path / "drift.log"
    outputs = Outputs(settings, model)
    first = DriftProcess(service_env(settings, featureset_path, config), log_path)
    second: DriftProcess | None = None
    try:
        await first.ready(settings)
        await outputs.start()

        # No champion: the labels alone ask for a bootstrap run.
        await publisher.publish_batch(to(config.labels_topic, scenario.boot))
        await outputs.until(lambda: bool(outputs.requests), "the bootstrap request")
        assert (
            first.metrics()[
                (
                    "driftloop_drift_training_requests_total",
                    (("model", model), ("trigger", "bootstrap")),
                )
            ]
            == 1.0
        )

        # v1 is promoted, then serves every prediction before any label comes back.
        await publisher.publish(
            config.promoted_topic,
            scenario.promoted.SerializeToString(),
            key=model,
            ce_type="driftloop.model.promoted.v1",
        )
        await eventually(
            lambda: (saved_state(state_file) or {}).get("champion") == 1, "the promotion"
        )
        await publisher.publish_batch(to(config.predictions_topic, scenario.predictions))
        await eventually(
            lambda: waiting_predictions(state_file) == EVENTS, "the predictions in the saved state"
        )

        # The labels trickle in; SIGKILL once a few hundred are saved, before the drift
        # (the labels that make it are held back until then).
        killed = asyncio.Event()
        sent = 0

        async def trickle() -> None:
            nonlocal sent
            for start in range(0, EVENTS, TRICKLE):
                if start >= HOLD_AT:
                    await killed.wait()
                chunk = scenario.labels[start : start + TRICKLE]
                await publisher.publish_batch(to(config.labels_topic, chunk))
                sent += len(chunk)
                if not killed.is_set():
                    await asyncio.sleep(0.05)

        producing = asyncio.create_task(trickle())
        try:
            at_snapshot = await eventually(
                lambda: counted_at_least(state_file, BOOT + KILL_AFTER),
                "labels in the saved state",
                state=state_file,
            )
            # Half a snapshot interval later: labels were read since, not yet saved.
            await asyncio.sleep(config.snapshot_interval_s / 2)
            sent_at_kill = sent
            assert await first.kill() == -signal.SIGKILL
            killed.set()
        finally:
            await producing
        on_disk = saved_state(state_file)
        assert on_disk is not None
        counted = labels_counted(on_disk)
        assert labels_counted(at_snapshot) <= counted < BOOT + CHANGE, "killed mid-stream"
        assert sent_at_kill > counted - BOOT, "labels were on the topic past the snapshot"
        assert on_disk["policy"]["pending"] is None, "killed before the drift"
        await outputs.poll(0.5)
        assert not outputs.drifts, "killed before the drift"

        # A new process finishes the stream from the saved state.
        second = DriftProcess(service_env(settings, featureset_path, config), log_path)
        await second.ready(settings)
        await outputs.until(
            lambda: len({ce_id for ce_id, _ in outputs.requests}) >= len(expected_requests),
            "the drift request",
        )
        final = await eventually(
            lambda: counted_at_least(state_file, BOOT + EVENTS),
            "every label in the saved state",
            state=state_file,
        )
        metrics = second.metrics()
        assert await second.terminate() == 0, second.tail()
        await outputs.poll(1.0)
    finally:
        first.close()
        if second is not None:
            second.close()
        await outputs.stop()

    # Every label counted exactly once, and each prediction joined once.
    state = saved_state(state_file)
    assert state is not None and labels_counted(final) == labels_counted(state)
    expected_state = json.loads(json.dumps(reference.to_json()))
    assert state["labels"]["total"] == BOOT + EVENTS, (sent_at_kill, counted)
    assert state["labels"] == expected_state["labels"]
    assert [point[0] for point in state["errors"]] == [f"e{i}" for i in range(EVENTS)]
    assert state["errors"] == expected_state["errors"]
    assert state["join"]["predictions"] == []
    assert len(state["join"]["labels"]) == BOOT  # the bootstrap labels never had a prediction
    assert outbox_size(state_file) == 0, "every decided event was published"

    # One bootstrap and one drift request, asked as a run without the crash asks them.
    requests = decoded(outputs.requests, events_pb2.TrainingRequested)
    assert set(requests) == set(expected_requests)
    for request_id, request in requests.items():
        assert comparable(request) == comparable(expected_requests[request_id])
    drift_request = next(
        r for r in requests.values() if r.trigger == events_pb2.TRAINING_TRIGGER_DRIFT
    )

    # The same drift, found once.
    drifts = decoded(outputs.drifts, events_pb2.DriftDetected)
    assert set(drifts) == set(expected_drifts)
    for drift_id, drift in drifts.items():
        assert comparable(drift) == comparable(expected_drifts[drift_id])
    assert drift_request.parent_drift_id in drifts
    assert int(drifts[drift_request.parent_drift_id].last_event_id[1:]) >= CHANGE

    # The restarted process decided the drift and its request, and no bootstrap.
    def count(name: str, **labels: str) -> float:
        key = (name, tuple(sorted({"model": model, **labels}.items())))
        return metrics.get(key, 0.0)

    assert count("driftloop_drift_training_requests_total", trigger="drift") == 1.0
    assert count("driftloop_drift_training_requests_total", trigger="bootstrap") == 0.0
    assert count("driftloop_drift_detections_total", kind="performance", detector="adwin") == len(
        expected_drifts
    )
