"""A rollout judged by the drift service on the real embedded broker.

The registry's `ModelRolloutStarted` opens the rollout; then come the champion's
predictions, the candidate's shadow predictions of the same events and their
labels, the candidate clearly better. One `RolloutJudged` with verdict PROMOTE
appears on `models.rollouts`, and the champion's watch (its join and error
stream) saw the champion's predictions only.

The test has its own source topics and model name; `models.rollouts`, where the
verdict goes, is shared, so the reader keeps only the test's model.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from driftloop.v1 import events_pb2
from driftloop_core.kafka import Outgoing, Publisher, Topics
from driftloop_core.kafka.topics import kind_of_message
from driftloop_core.settings import Settings
from driftloop_drift.bootstrap import build
from driftloop_drift.config import DriftSettings
from driftloop_testing import eventually
from google.protobuf.message import Message
from prometheus_client import REGISTRY

pytestmark = pytest.mark.integration

EVENTS = 400
JUDGED_TYPE = kind_of_message("driftloop.v1.RolloutJudged").ce_type


class Verdicts:
    """`RolloutJudged` records of one model on `models.rollouts`."""

    def __init__(self, settings: Settings, model: str) -> None:
        self._consumer = AIOKafkaConsumer(
            **settings.kafka.client_options(), enable_auto_commit=False
        )
        self._model = model.encode()
        self.seen: list[tuple[str, events_pb2.RolloutJudged]] = []

    async def start(self) -> None:
        await self._consumer.start()
        await self._consumer.topics()
        tps = [
            TopicPartition(Topics.MODELS_ROLLOUTS, p)
            for p in self._consumer.partitions_for_topic(Topics.MODELS_ROLLOUTS) or ()
        ]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)

    async def poll(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for messages in (await self._consumer.getmany(timeout_ms=200)).values():
                for m in messages:
                    headers = {k: v.decode() for k, v in m.headers}
                    if m.key == self._model and headers.get("ce_type") == JUDGED_TYPE:
                        self.seen.append(
                            (headers["ce_id"], events_pb2.RolloutJudged.FromString(m.value))
                        )

    async def until(self, count: int, timeout_s: float = 40.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.seen) < count:
            assert time.monotonic() < deadline, "timed out waiting for a verdict"
            await self.poll(0.5)

    async def stop(self) -> None:
        await self._consumer.stop()


def to(topic: str, messages: list[Message], key: str = "c1") -> list[Outgoing]:
    records = [Outgoing.event(message, key=key) for message in messages]
    return [Outgoing(topic, r.value, r.key, r.ce_type, r.event_id, r.content_type) for r in records]


def prediction(
    model: str,
    event_id: str,
    version: int,
    predicted: int,
    t_ms: int,
    rollout_id: str = "",
    latency_us: int = 0,
) -> events_pb2.Prediction:
    message = events_pb2.Prediction(
        event_id=event_id,
        entity_id="c1",
        model=model,
        model_version=version,
        label=predicted,
        shadow=bool(rollout_id),
        rollout_id=rollout_id,
    )
    message.event_time.FromMilliseconds(t_ms)
    if latency_us:
        message.latency.FromMicroseconds(latency_us)
    return message


def observation(model: str, event_id: str, label: int, t_ms: int) -> events_pb2.Observation:
    message = events_pb2.Observation(
        event_id=event_id, entity_id="c1", label=label, feature_set=model
    )
    message.event_time.FromMilliseconds(t_ms)
    return message


async def test_a_clearly_better_candidate_is_judged_promote_once(
    stack_settings: Settings,
    config: DriftSettings,
    publisher: Publisher,
    unique: str,
    kit: Any,
) -> None:
    model = f"m{unique}"
    rollout_id = f"rollout-{unique}"
    verdicts = Verdicts(stack_settings, model)
    service = build(stack_settings, kit.payments(model), config, grpc_address="127.0.0.1:0")
    await service.start()
    await verdicts.start()
    try:
        started = events_pb2.ModelRolloutStarted(
            rollout_id=rollout_id,
            model=model,
            candidate_version=2,
            champion_version=1,
            policy=events_pb2.RolloutPolicy(min_paired=100, alpha=0.05, beta=0.2, effect=0.1),
        )
        started.started_at.GetCurrentTime()
        started.policy.max_duration.FromSeconds(3600)
        await publisher.publish_batch(to(config.rollouts_topic, [started], key=model))
        engine = service.application.engine
        await eventually(lambda: engine.rollouts.open == 1, 30, "the rollout opened")

        # The champion is wrong on 30% of the events, the candidate on 5%.
        rng = np.random.default_rng(4)
        t0 = kit.T0_MS
        champions: list[Message] = []
        shadows: list[Message] = []
        labels: list[Message] = []
        champion_errors = 0
        for i in range(EVENTS):
            truth = int(rng.uniform() < 0.3)
            champion_wrong = bool(rng.uniform() < 0.3)
            candidate_wrong = bool(rng.uniform() < 0.05)
            champion_errors += champion_wrong
            t_ms = t0 + i * 100
            event_id = f"e{i}"
            champions.append(prediction(model, event_id, 1, truth ^ champion_wrong, t_ms))
            # The candidate took 2-6 ms per answer: its p99 over 100 or more is 6 ms.
            latency_us = 2_000 + 1_000 * (i % 5)
            shadows.append(
                prediction(
                    model, event_id, 2, truth ^ candidate_wrong, t_ms, rollout_id, latency_us
                )
            )
            labels.append(observation(model, event_id, truth, t_ms))
        # Shadows first for half the events, the champion's first for the rest;
        # labels last for half, first for the rest.
        half = EVENTS // 2
        await publisher.publish_batch(to(config.labels_topic, labels[half:]))
        await publisher.publish_batch(to(config.predictions_topic, shadows[:half]))
        await publisher.publish_batch(to(config.predictions_topic, champions))
        await publisher.publish_batch(to(config.predictions_topic, shadows[half:]))
        await publisher.publish_batch(to(config.labels_topic, labels[:half]))

        await verdicts.until(1)
        ce_id, judged = verdicts.seen[0]
        assert (judged.rollout_id, judged.model) == (rollout_id, model)
        assert (judged.candidate_version, judged.champion_version) == (2, 1)
        assert judged.verdict == events_pb2.ROLLOUT_VERDICT_PROMOTE
        figures = judged.figures
        assert 100 <= figures.paired <= EVENTS
        assert figures.candidate_errors < figures.champion_errors
        assert figures.candidate_only_right > figures.champion_only_right
        assert figures.p_value < 0.01 and figures.log_likelihood_ratio >= 2.77
        assert judged.reason.startswith(f"candidate v2 better than champion v1 on {figures.paired}")
        assert "McNemar p=" in judged.reason
        # Every paired event's shadow answer was scored, and some not yet paired too.
        assert figures.paired <= figures.candidate_scored <= EVENTS
        assert figures.candidate_p99_ms == 6.0

        # Every event handled: the champion's watch saw the champion's predictions only.
        await eventually(lambda: engine.labels.total == EVENTS, 30, "every label counted")
        assert engine.joiner.stats.joined == EVENTS and engine.joiner.stats.duplicates == 0
        assert engine.joiner.pending == (0, 0)
        errors = engine.to_json()["errors"]
        assert len(errors) == EVENTS
        assert sum(point[-1] for point in errors) == champion_errors
        assert engine.champion == 1 and engine.ignored == 0

        # One verdict, whatever else comes: more paired events, a replay of the start.
        await publisher.publish_batch(to(config.rollouts_topic, [started], key=model))
        await verdicts.poll(2.0)
        assert [c for c, _ in verdicts.seen] == [ce_id]
        assert (
            REGISTRY.get_sample_value(
                "driftloop_drift_rollout_verdicts_total",
                {"model": model, "verdict": "promote", "rule": "better"},
            )
            == 1
        )
        paired = REGISTRY.get_sample_value(
            "driftloop_drift_rollout_paired_events_total", {"model": model}
        )
        assert paired == figures.paired
    finally:
        await service.stop()
        await verdicts.stop()
