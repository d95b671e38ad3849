"""The drift service on the real embedded broker: labels alone ask for a bootstrap
model; predictions whose error rate rises yield `DriftDetected` and a drift
`TrainingRequested`; after a stop and a start the state is back and nothing is
asked twice.

Each test uses its own source topics and model name; `drift.detected` and
`training.requested` are shared, so the reader keeps only the test's model.
The registry is not running: the service then watches performance drift only.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from driftloop.v1 import events_pb2
from driftloop_core.kafka import Outgoing, Publisher, Topics
from driftloop_core.settings import Settings
from driftloop_drift.bootstrap import build
from driftloop_drift.config import DriftSettings

pytestmark = pytest.mark.integration


class Outputs:
    """`drift.detected` and `training.requested` records keyed by one model."""

    def __init__(self, settings: Settings, model: str) -> None:
        self._consumer = AIOKafkaConsumer(
            **settings.kafka.client_options(), enable_auto_commit=False
        )
        self._model = model.encode()
        self.drifts: list[events_pb2.DriftDetected] = []
        self.requests: list[tuple[str, events_pb2.TrainingRequested]] = []

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

    async def poll(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for messages in (await self._consumer.getmany(timeout_ms=200)).values():
                for m in messages:
                    if m.key != self._model:
                        continue
                    ce_id = dict(m.headers)["ce_id"].decode()
                    if m.topic == Topics.DRIFT_DETECTED:
                        self.drifts.append(events_pb2.DriftDetected.FromString(m.value))
                    else:
                        request = events_pb2.TrainingRequested.FromString(m.value)
                        self.requests.append((ce_id, request))

    async def until(self, check: Any, timeout_s: float = 40.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            assert time.monotonic() < deadline, "timed out"
            await self.poll(0.5)

    async def stop(self) -> None:
        await self._consumer.stop()


def observation(model: str, event_id: str, label: int, t_ms: int) -> Outgoing:
    message = events_pb2.Observation(
        event_id=event_id, entity_id="c1", label=label, feature_set=model
    )
    message.event_time.FromMilliseconds(t_ms)
    return Outgoing.event(message, key="c1")


def prediction(model: str, event_id: str, predicted: int, t_ms: int) -> Outgoing:
    message = events_pb2.Prediction(
        event_id=event_id, entity_id="c1", model=model, model_version=1, label=predicted
    )
    message.event_time.FromMilliseconds(t_ms)
    return Outgoing.event(message, key="c1")


def to(topic: str, records: list[Outgoing]) -> list[Outgoing]:
    return [Outgoing(topic, r.value, r.key, r.ce_type, r.event_id, r.content_type) for r in records]


async def test_bootstrap_then_drift_then_restart_without_duplicates(
    stack_settings: Settings,
    config: DriftSettings,
    publisher: Publisher,
    unique: str,
    kit: Any,
) -> None:
    model = f"m{unique}"
    featureset = kit.payments(model)
    outputs = Outputs(stack_settings, model)
    service = build(stack_settings, featureset, config, grpc_address="127.0.0.1:0")
    await service.start()
    await outputs.start()
    try:
        # A record that does not decode is dead-lettered and the partition moves on.
        await publisher.publish(
            config.predictions_topic, b"\xff\xff", key="c1", ce_type="driftloop.prediction.made.v1"
        )
        # No champion: labelled observations alone make the first request.
        t0 = kit.T0_MS
        labels = [observation(model, f"boot{i}", i % 2, t0 + i) for i in range(60)]
        await publisher.publish_batch(to(config.labels_topic, labels))
        await outputs.until(lambda: outputs.requests)
        ce_id, bootstrap = outputs.requests[0]
        assert bootstrap.trigger == events_pb2.TRAINING_TRIGGER_BOOTSTRAP
        assert bootstrap.model == model and bootstrap.requested_by == "drift"
        assert bootstrap.window.last_n == 500 and ce_id == bootstrap.request_id

        # Version 1 is promoted; its error rate then rises from 10% to 50%.
        promoted = events_pb2.ModelPromoted(
            promotion_id=f"p{unique}", model=model, to_version=1, alias="champion"
        )
        await publisher.publish(
            config.promoted_topic,
            promoted.SerializeToString(),
            key=model,
            ce_type="driftloop.model.promoted.v1",
        )
        rng = np.random.default_rng(0)
        preds: list[Outgoing] = []
        truths: list[Outgoing] = []
        for i in range(3000):
            truth = int(rng.uniform() < 0.3)
            wrong = rng.uniform() < (0.1 if i < 1500 else 0.5)
            t_ms = t0 + 10_000 + i * 100
            preds.append(prediction(model, f"e{i}", 1 - truth if wrong else truth, t_ms))
            truths.append(observation(model, f"e{i}", truth, t_ms))
        await publisher.publish_batch(to(config.predictions_topic, preds[:1500]))
        await publisher.publish_batch(to(config.labels_topic, truths[:1500]))
        # Late labels this time: the predictions wait for them.
        await publisher.publish_batch(to(config.predictions_topic, preds[1500:]))
        await publisher.publish_batch(to(config.labels_topic, truths[1500:]))
        await outputs.until(lambda: len(outputs.requests) >= 2)
        drift = outputs.drifts[0]
        assert drift.model == model and drift.model_version == 1
        assert drift.kind == events_pb2.DRIFT_KIND_PERFORMANCE and drift.detector == "adwin"
        assert drift.statistic > 0.1 and drift.threshold == 0.002 and drift.window_size > 0
        assert drift.first_event_id.startswith("e") and drift.last_event_id.startswith("e")
        assert int(drift.last_event_id[1:]) >= 1500, "detected after the change"
        _, request = outputs.requests[1]
        assert request.trigger == events_pb2.TRAINING_TRIGGER_DRIFT
        assert request.parent_drift_id == drift.drift_id
        assert request.window.WhichOneof("kind") in ("time_range", "last_n")
        await asyncio.sleep(1.0)
        engine = service.application.engine
        assert engine is not None
        before = (engine.labels.total, engine.joiner.stats.joined, engine.champion)
        assert before == (3060, 3000, 1)
    finally:
        await service.stop()

    # Start again: the state is back, and nothing is asked twice.
    again = build(stack_settings, featureset, config, grpc_address="127.0.0.1:0")
    await again.start()
    try:
        await outputs.poll(3.0)
        engine = again.application.engine
        assert engine is not None
        assert (engine.labels.total, engine.champion) == (3060, 1)
        assert engine.policy.in_flight is not None
        assert engine.policy.in_flight.request_id == request.request_id
        # A replay of everything (a producer retrying) counts nothing and asks nothing.
        await publisher.publish_batch(to(config.labels_topic, truths + labels))
        await publisher.publish_batch(to(config.predictions_topic, preds))
        await outputs.poll(3.0)
        assert engine.labels.total == 3060
        ids = [request_id for request_id, _ in outputs.requests]
        assert len(ids) == len(set(ids)) == 2
    finally:
        await again.stop()
        await outputs.stop()
