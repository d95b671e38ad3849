"""What drift takes from others without trusting it: feature values that are not
finite numbers, label corrections, and Kafka record timestamps from far ahead of
the wall clock (the engine, the record handler with the real application, and
the service on the real broker with confluent-kafka as the stranger)."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException, Producer
from driftloop.v1 import events_pb2
from driftloop_core.broker import free_port
from driftloop_core.kafka import EventHeaders, Outgoing, Publisher, Record
from driftloop_core.kafka.topics import kind_of_message
from driftloop_core.settings import Settings
from driftloop_drift.adapters.state import DriftStateStore
from driftloop_drift.application import DriftApplication
from driftloop_drift.bootstrap import build
from driftloop_drift.domain.detectors import live_reference
from driftloop_drift.domain.join import LabelSeen, PredictionSeen
from driftloop_drift.entrypoints.kafka import DriftRecords
from driftloop_drift.handlers import DriftEngine
from driftloop_drift.outbox import Outbox
from driftloop_drift.ports import ChampionReference
from driftloop_testing import eventually
from prometheus_client import REGISTRY

HOUR_MS = 3_600_000
YEAR_MS = 365 * 24 * HOUR_MS
NOT_FINITE = (math.inf, -math.inf, math.nan)


def champion_engine(kit: Any) -> DriftEngine:
    engine = DriftEngine(kit.payments(), kit.engine_config())
    engine.on_promoted(1, kit.reference(), kit.T0_MS)
    return engine


def finite_everywhere(data: Any) -> bool:
    """Whether a detector history (plain JSON data) holds finite numbers only."""
    if isinstance(data, float):
        return math.isfinite(data)
    if isinstance(data, dict):
        return all(finite_everywhere(value) for value in data.values())
    if isinstance(data, list):
        return all(finite_everywhere(value) for value in data)
    return True


def test_non_finite_feature_values_reach_no_detector_and_are_counted(kit: Any) -> None:
    engine = champion_engine(kit)
    stream = kit.Stream(seed=21)
    skipped: list[str] = []
    detected: list[events_pb2.DriftDetected] = []
    for n, (prediction, label, now) in enumerate(stream.events(3000, 0.1)):
        if n % 3 == 0:
            bad = NOT_FINITE[n // 3 % 3]
            prediction = replace(prediction, features={**prediction.features, "amount": bad})
        for result in (engine.on_prediction(prediction, now), engine.on_label(label, now)):
            skipped += result.non_finite
            detected += [m for m in result.events if isinstance(m, events_pb2.DriftDetected)]
    # A thousand infinities and NaNs, counted, and no drift made of them: in an
    # end bin they would have moved PSI far past its threshold.
    assert skipped == ["amount"] * 1000
    assert [d.feature for d in detected if d.kind == events_pb2.DRIFT_KIND_DATA] == []
    assert finite_everywhere(json.loads(json.dumps(engine.to_json()["data"])))
    assert engine.statistics()[("psi", "amount")] < 0.25


def test_a_live_reference_is_built_from_finite_values_only() -> None:
    reference = live_reference([1.0, 2.0, math.inf, -math.inf, math.nan, 3.0], numeric=True)
    assert reference.count == 3
    assert all(math.isfinite(edge) for edge in reference.numeric.edges)


def test_a_correction_rescores_its_joined_prediction_and_counts_once(kit: Any) -> None:
    engine = champion_engine(kit)
    t0 = kit.T0_MS
    right = PredictionSeen("e1", "payments", 1, predicted=1, event_time_ms=t0)
    engine.on_prediction(right, t0)
    engine.on_label(LabelSeen("e1", "payments", 1, t0), t0)
    assert engine.to_json()["errors"] == [["e1", t0, 0]]

    corrected = LabelSeen("e1", "payments", 0, t0, correction=True)
    assert engine.on_label(corrected, t0 + 1).events == []
    state = engine.to_json()
    assert state["errors"] == [["e1", t0, 1]], "the error stream takes the corrected bit"
    assert state["performance"] == [["e1", t0, 1]], "and so does the performance detector"
    assert engine.labels.total == 1 and engine.joiner.stats.joined == 1
    # A plain repeat of the old label is still a duplicate; the correction again changes nothing.
    engine.on_label(LabelSeen("e1", "payments", 1, t0), t0 + 2)
    engine.on_label(corrected, t0 + 3)
    assert engine.to_json()["errors"] == [["e1", t0, 1]] and engine.labels.total == 1

    # A label still waiting for its prediction takes the correction before it joins.
    engine.on_label(LabelSeen("e2", "payments", 1, t0 + 10), t0 + 10)
    engine.on_label(LabelSeen("e2", "payments", 0, t0 + 10, correction=True), t0 + 11)
    engine.on_prediction(PredictionSeen("e2", "payments", 1, 0, t0 + 10), t0 + 12)
    assert engine.to_json()["errors"][-1] == ["e2", t0 + 10, 0]
    # A correction of an event drift never saw labelled is its first label.
    engine.on_prediction(PredictionSeen("e3", "payments", 1, 1, t0 + 20), t0 + 20)
    engine.on_label(LabelSeen("e3", "payments", 1, t0 + 20, correction=True), t0 + 21)
    assert engine.to_json()["errors"][-1] == ["e3", t0 + 20, 0]
    assert engine.labels.total == 3 and engine.joiner.stats.joined == 3

    # After a restart the joined prediction is still known, and can be corrected again.
    config = kit.engine_config()
    restored = DriftEngine.from_json(kit.payments(), config, json.loads(json.dumps(state)))
    restored.on_label(LabelSeen("e1", "payments", 1, t0, correction=True), t0 + 30)
    assert restored.to_json()["errors"][0] == ["e1", t0, 0]


def clamped_so_far() -> float:
    value = REGISTRY.get_sample_value(
        "driftloop_drift_record_times_clamped_total", {"model": "payments"}
    )
    return value or 0.0


class NoChampion:
    async def lookup(self, model: str, version: int | None = None) -> ChampionReference | None:
        return None


class Sent:
    async def publish(self, topic: str, value: bytes, **kwargs: Any) -> object:
        return None


def label_record(offset: int, message: Any, timestamp_ms: int, **extra: str) -> Record:
    ce_type = kind_of_message(message.DESCRIPTOR.full_name).ce_type
    return Record(
        topic="sources",
        partition=0,
        offset=offset,
        key=b"c1",
        value=message.SerializeToString(),
        headers=EventHeaders(id=f"r{offset}", type=ce_type, source="test", extra=extra),
        raw_headers=(),
        timestamp_ms=timestamp_ms,
    )


async def test_records_from_far_ahead_count_as_the_wall_clock_and_corrections_as_such(
    tmp_path: Path, kit: Any
) -> None:
    featureset = kit.payments()
    store = DriftStateStore(tmp_path / "drift.sqlite")
    app = DriftApplication(
        lambda state: DriftEngine(featureset, kit.engine_config()),
        store,
        Outbox(store, Sent()),
        NoChampion(),
        snapshot_interval_s=1.0,
    )
    await app.load()
    wall_ms = 1_800_000_000_000
    records = DriftRecords(app, max_future_ms=300_000, clock=lambda: wall_ms / 1000)
    before = clamped_so_far()

    prediction = events_pb2.Prediction(event_id="p1", model="payments", model_version=1, label=1)
    stranger = events_pb2.Prediction(event_id="x", model="someone-else", model_version=1)
    await records.handle_batch(
        [
            label_record(0, prediction, wall_ms - 1000),
            label_record(1, stranger, wall_ms + YEAR_MS),
        ]
    )
    assert app.engine.clock_ms == wall_ms + 300_000
    assert app.engine.joiner.pending == (1, 0), "the prediction still waits for its label"
    assert clamped_so_far() == before + 1

    observed = events_pb2.Observation(event_id="p1", feature_set="payments", label=1)
    relabel = events_pb2.Label(event_id="p1", feature_set="payments", label=0)
    await records.handle_batch(
        [
            label_record(2, observed, wall_ms),
            label_record(3, relabel, wall_ms, label_correction="1"),
        ]
    )
    engine = app.engine
    assert engine.joiner.stats.joined == 1 and engine.labels.total == 1
    assert engine.to_json()["errors"][0][2] == 1, "the correction re-scored the prediction"
    await app.close()


@pytest.fixture
async def publisher(settings: Settings) -> AsyncIterator[Publisher]:
    async with Publisher(settings) as running:
        yield running


def stranger_record(settings: Settings, topic: str, timestamp_ms: int) -> None:
    """A decodable prediction of no one's model, stamped a year ahead, as any
    producer allowed to write the topic can send it."""
    producer = Producer(
        {"bootstrap.servers": settings.kafka.bootstrap_servers, "partitioner": "murmur2_random"}
    )
    message = events_pb2.Prediction(event_id="stranger", model="nobody", model_version=1)
    headers: list[tuple[str, str | bytes | None]] = []
    headers.extend(
        EventHeaders(
            id="stranger",
            type=kind_of_message("driftloop.v1.Prediction").ce_type,
            source="/stranger",
        ).to_kafka()
    )
    failed: list[object] = []
    producer.produce(
        topic,
        message.SerializeToString(),
        key=b"c1",
        headers=headers,
        timestamp=timestamp_ms,
        on_delivery=lambda error, _: failed.append(error) if error is not None else None,
    )
    if producer.flush(30) or failed:
        raise KafkaException(f"the stranger's record was not delivered: {failed}")


@pytest.mark.integration
async def test_a_record_stamped_far_ahead_does_not_expire_the_pending_joins(
    settings: Settings, publisher: Publisher, unique: str, kit: Any
) -> None:
    settings.endpoints.registry = f"127.0.0.1:{free_port()}"  # no registry: performance only
    config = kit.drift_settings(unique)
    model = f"m{unique}"
    service = build(settings, kit.payments(model), config, grpc_address="127.0.0.1:0")
    await service.start()
    try:
        t0 = kit.T0_MS
        predictions = []
        labels = []
        for i in range(40):
            prediction = events_pb2.Prediction(
                event_id=f"e{i}", entity_id="c1", model=model, model_version=1, label=i % 2
            )
            prediction.event_time.FromMilliseconds(t0 + i)
            predictions.append(
                Outgoing(
                    config.predictions_topic,
                    prediction.SerializeToString(),
                    "c1",
                    kind_of_message("driftloop.v1.Prediction").ce_type,
                    f"p{i}",
                )
            )
            observation = events_pb2.Observation(
                event_id=f"e{i}", entity_id="c1", label=1, feature_set=model
            )
            observation.event_time.FromMilliseconds(t0 + i)
            labels.append(
                Outgoing(
                    config.labels_topic,
                    observation.SerializeToString(),
                    "c1",
                    kind_of_message("driftloop.v1.Observation").ce_type,
                    f"o{i}",
                )
            )
        await publisher.publish_batch(predictions)
        engine = service.application.engine
        await eventually(lambda: engine.joiner.pending[0] == 40, 30, "40 waiting predictions")

        # The stranger's record comes after the predictions, keyed like them.
        await asyncio.to_thread(
            stranger_record, settings, config.predictions_topic, int(time.time() * 1000) + YEAR_MS
        )
        # A prediction of another model: handled (service time), not watched.
        await eventually(lambda: engine.ignored == 1, 30, "the stranger's record handled")
        assert engine.joiner.stats.expired_predictions == 0
        assert engine.joiner.pending == (40, 0)
        # Service time is at most the wall clock plus the grace (5 minutes).
        assert engine.clock_ms <= int(time.time() * 1000) + 5 * 60_000

        await publisher.publish_batch(labels)
        await eventually(lambda: engine.labels.total == 40, 30, "the 40 labels counted")
        assert engine.joiner.stats.joined == 40, "every prediction met its label"
        assert engine.joiner.stats.expired_predictions == 0
    finally:
        await service.stop()
