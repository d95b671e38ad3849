"""The backtest through a running stack (`driftloop up`), at the chosen rate.

The stream is played as an application and its producers would play it: for
each scored event, on schedule, `Predictor/Predict` (the champion, with the
entity's online features; `UNAVAILABLE` counts as "no model yet"), then the
observation on `events.raw`, and its label `label_delay_s` later. Unlabelled
observations (history) go to `events.raw` as they come, unscored. The loop's
own events (drift, training requests and failures, registrations, promotions)
are read from their topics into the same `Timeline` the in-process replay
fills, so one report reads both.

The stack keeps its state: a model it already serves answers from the first
event, and the run's figures then say how that model fared on this stream.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from driftloop.v1 import predictor_pb2, predictor_pb2_grpc
from driftloop_core.featureset import FeatureSet
from driftloop_core.grpc.client import open_channel
from driftloop_core.kafka.consumer import tail
from driftloop_core.kafka.topics import Topics
from driftloop_core.settings import Settings
from driftloop_core.values import fill_feature_value

from driftloop_cli.backtest.stream import Sent, Stream
from driftloop_cli.demo.driver import (
    WATCHED_TOPICS,
    add_record,
    call_predict,
    follow,
    start_producer,
)
from driftloop_cli.demo.timeline import Served, Timeline

# After the last event: time for the last labels to reach drift, and for a
# training run they cause to be reported.
DRAIN_S = 4.0


@dataclass(frozen=True)
class StackOptions:
    rate: float = 100.0
    label_delay_s: float = 2.0
    predict_timeout_s: float = 2.0
    drain_s: float = DRAIN_S


def observation(featureset: FeatureSet, sent: Sent) -> bytes:
    data: dict[str, Any] = {
        "event_id": sent.event_id,
        featureset.entity: sent.entity_id,
        featureset.timestamp: sent.event_time_ms,
    }
    return json.dumps(data | dict(sent.values)).encode()


def predict_request(featureset: FeatureSet, sent: Sent) -> predictor_pb2.PredictRequest:
    request = predictor_pb2.PredictRequest(
        model=featureset.name, event_id=sent.event_id, entity_id=sent.entity_id
    )
    for name, value in sent.values.items():
        fill_feature_value(request.features[name], value)
    request.event_time.FromMilliseconds(sent.event_time_ms)
    return request


class StackReplay:
    """One replay of `stream` through the stack that `settings` point at."""

    def __init__(
        self,
        settings: Settings,
        featureset: FeatureSet,
        stream: Stream,
        options: StackOptions,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.featureset = featureset
        self.stream = stream
        self.options = options
        self.progress = progress
        self.timeline = Timeline()

    async def run(self) -> Timeline:
        producer = await start_producer(self.settings, "backtest")
        watcher = await tail(
            self.settings, WATCHED_TOPICS, from_end=True, client_suffix="backtest-watch"
        )
        channel = open_channel(self.settings.endpoints.inference, self.settings)
        labels: deque[tuple[float, Sent, int]] = deque()
        tasks = [
            asyncio.create_task(self._watch(watcher)),
            asyncio.create_task(self._label(producer, labels)),
        ]
        try:
            stub = predictor_pb2_grpc.PredictorStub(channel)
            self.timeline.started_at = time.time()
            await self._stream(stub, producer, labels)
            await asyncio.sleep(self.options.label_delay_s + self.options.drain_s)
            self.timeline.outcome = "completed"
        finally:
            self.timeline.finished_at = time.time()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await channel.close()
            await watcher.stop()
            await producer.stop()
        return self.timeline

    async def _stream(
        self,
        stub: predictor_pb2_grpc.PredictorAsyncStub,
        producer: AIOKafkaProducer,
        labels: deque[tuple[float, Sent, int]],
    ) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        events = self.stream.events
        for sent in self.stream.sent:
            index = sent.index
            if index is not None:
                delay = began + index / self.options.rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                self.timeline.served.append(await self._predict(stub, sent, events[index].label))
            await producer.send(
                Topics.RAW, observation(self.featureset, sent), key=sent.entity_id.encode()
            )
            if index is None:
                continue
            now = time.time()
            self.timeline.sent[index] = now
            labels.append((now + self.options.label_delay_s, sent, events[index].label))
            if self.progress is not None:
                self.progress(index + 1)

    async def _predict(
        self, stub: predictor_pb2_grpc.PredictorAsyncStub, sent: Sent, truth: int
    ) -> Served:
        assert sent.index is not None
        request = predict_request(self.featureset, sent)
        served, _ = await call_predict(
            stub,
            request,
            sent.index,
            truth,
            self.options.predict_timeout_s,
            champion_at=self.timeline.champion_at,
        )
        return served

    async def _label(
        self, producer: AIOKafkaProducer, labels: deque[tuple[float, Sent, int]]
    ) -> None:
        while True:
            while labels and labels[0][0] <= time.time():
                _, sent, label = labels.popleft()
                body = {"event_id": sent.event_id, self.featureset.label: label}
                await producer.send(
                    Topics.RAW, json.dumps(body).encode(), key=sent.entity_id.encode()
                )
                self.timeline.labels_sent += 1
            await asyncio.sleep(0.05)

    async def _watch(self, consumer: Any) -> None:
        await follow(consumer, lambda record: add_record(self.timeline, record))
