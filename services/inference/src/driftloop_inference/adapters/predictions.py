"""Predictions out to Kafka without ever making a request wait.

`offer` puts a prediction in a bounded buffer and returns at once; when the
buffer is full the prediction is dropped and counted. A background task sends
what is buffered in batches; a failed send is logged, counted as dropped, and
sending goes on.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from driftloop.v1 import events_pb2
from driftloop_core.kafka import Outgoing, Publisher
from driftloop_core.kafka.topics import kind_of_message

from driftloop_inference.metrics import PREDICTIONS_DROPPED

log = structlog.get_logger(__name__)
CE_TYPE = kind_of_message("driftloop.v1.Prediction").ce_type
MAX_BATCH = 500


class PredictionSink:
    def __init__(self, publisher: Publisher | None, topic: str, capacity: int) -> None:
        self._publisher = publisher
        self._topic = topic
        self._queue: asyncio.Queue[events_pb2.Prediction] = asyncio.Queue(maxsize=capacity)
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        self.dropped = 0

    def offer(self, prediction: events_pb2.Prediction) -> None:
        if self._publisher is None:
            return
        try:
            self._queue.put_nowait(prediction)
        except asyncio.QueueFull:
            self.dropped += 1
            PREDICTIONS_DROPPED.labels("buffer_full").inc()

    def start(self) -> None:
        if self._publisher is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="predictions")

    async def stop(self, flush_s: float = 2.0) -> None:
        if self._task is None:
            return
        # Give what is buffered a moment to go out.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(flush_s):
                await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        assert self._publisher is not None
        queue = self._queue
        while True:
            first = await queue.get()
            batch = [first]
            while len(batch) < MAX_BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            records = [
                Outgoing(self._topic, p.SerializeToString(), p.entity_id or None, CE_TYPE)
                for p in batch
            ]
            try:
                await self._publisher.publish_batch(records, trace_batch=True)
                self.published += len(batch)
            except Exception as error:  # noqa: BLE001 - never let publishing die
                self.dropped += len(batch)
                PREDICTIONS_DROPPED.labels("publish_failed").inc(len(batch))
                log.error("predictions_publish_failed", count=len(batch), error=repr(error))
                await asyncio.sleep(0.5)
            finally:
                for _ in batch:
                    queue.task_done()
