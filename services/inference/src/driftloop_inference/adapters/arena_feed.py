"""The arena's feed: every served prediction and every label, into this process's arena.

Predict asks the arena who answers; this is how the arena learns how the
answers turned out. One `ConsumerLoop` reads every partition of the
predictions topic and of the labels topic (`events.valid`: observations that
carry a label, and late labels, as drift reads them) by assignment, in no
consumer group: every replica and every worker process reads everything, so
each keeps the same arena whichever replica served a request. It starts at the
end of the topics and commits nothing: a restarted process starts a fresh arena.

Records go to the handler of their CloudEvents type (`HANDLERS`); other types,
other models' records and a rollout candidate's shadow predictions (answers no
caller was given) are skipped. The feed only follows topics that drift
owns (and dead-letters from), so a record it cannot use (one that does not
decode, a prediction without an event id, features the learners cannot take)
is logged and skipped, never dead-lettered a second time, and the feed moves on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import structlog
from aiokafka import TopicPartition
from driftloop.v1 import events_pb2
from driftloop_core.kafka import ConsumerLoop, PoisonMessage, Publisher, Record, StoredOffsets
from driftloop_core.kafka.consumer import reader
from driftloop_core.kafka.offsets import true_end_offsets
from driftloop_core.kafka.policies import Positions
from driftloop_core.kafka.topics import kind_of_type
from driftloop_core.settings import Settings
from google.protobuf.message import DecodeError, Message

from driftloop_inference.online.host import ArenaHost

log = structlog.get_logger(__name__)

# The name the loop's metrics and spans carry; the reader itself joins no group.
GROUP_ID = "driftloop-inference-arena"
# The longest stretch of learning between two yields to the event loop: a label
# costs the learners a few milliseconds (ARF most), so a batch of them is cut
# into slices and Predict calls waiting on the same loop are answered between.
YIELD_AFTER_S = 0.002


class Unusable(Exception):
    """A record the arena cannot take; logged and skipped."""


Handler = Callable[[ArenaHost, bytes], None]
M = TypeVar("M", bound=Message)


def _decode(cls: type[M], value: bytes) -> M:
    try:
        return cls.FromString(value)
    except DecodeError as error:
        raise Unusable(f"value is not a {cls.DESCRIPTOR.full_name}: {error}") from None


def on_prediction(host: ArenaHost, value: bytes) -> None:
    prediction = _decode(events_pb2.Prediction, value)
    if not prediction.event_id:
        raise Unusable("Prediction.event_id is empty")
    host.observe(prediction)


def on_observation(host: ArenaHost, value: bytes) -> None:
    observation = _decode(events_pb2.Observation, value)
    if observation.HasField("label") and observation.event_id:
        host.label(observation.feature_set or host.model, observation.event_id, observation.label)


def on_label(host: ArenaHost, value: bytes) -> None:
    label = _decode(events_pb2.Label, value)
    if not label.event_id:
        raise Unusable("Label.event_id is empty")
    host.label(label.feature_set or host.model, label.event_id, label.label)


HANDLERS: dict[str, Handler] = {
    events_pb2.Prediction.DESCRIPTOR.full_name: on_prediction,
    events_pb2.Observation.DESCRIPTOR.full_name: on_observation,
    events_pb2.Label.DESCRIPTOR.full_name: on_label,
}


class ArenaRecords:
    """The loop's batch handler: each record to its handler, then the arena's metrics."""

    def __init__(self, host: ArenaHost) -> None:
        self._host = host
        self.skipped = 0

    async def handle_batch(self, records: Sequence[Record]) -> list[PoisonMessage | None]:
        since = time.perf_counter()
        for record in records:
            self._handle(record)
            if time.perf_counter() - since > YIELD_AFTER_S:
                await asyncio.sleep(0)
                since = time.perf_counter()
        if records:
            self._host.settled()
        return [None] * len(records)

    def _handle(self, record: Record) -> None:
        kind = kind_of_type(record.headers.type) if record.headers.type else None
        handler = None if kind is None else HANDLERS.get(kind.message)
        if handler is None:
            return
        try:
            handler(self._host, record.value)
        # TypeError and ValueError: features a learner cannot take (a value of
        # another type than the feature had so far) make the record unusable.
        except (Unusable, TypeError, ValueError) as error:
            self.skipped += 1
            log.warning(
                "arena_record_skipped",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                reason=str(error) or type(error).__name__,
            )


async def latest_positions(settings: Settings, topics: Iterable[str]) -> Positions:
    """The end of every partition of `topics`: where the feed starts."""
    consumer = reader(settings, client_suffix="arena-ends")
    await consumer.start()
    try:
        await consumer.topics()  # refreshes the metadata partitions_for_topic reads
        partitions = [
            TopicPartition(topic, partition)
            for topic in topics
            for partition in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        reported: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    # The embedded broker can report an end short of the last record; the check
    # fetches, and an empty partition would make it wait out its timeout.
    filled = {tp: end for tp, end in reported.items() if end > 0}
    ends = reported | await true_end_offsets(settings.kafka, filled)
    return {(tp.topic, tp.partition): offset for tp, offset in ends.items()}


def build_feed(
    settings: Settings,
    topics: Sequence[str],
    host: ArenaHost,
    publisher: Publisher,
) -> ConsumerLoop:
    """The feed of `host`'s arena from `topics` (predictions, then labels), from their end."""

    async def load() -> Positions:
        return await latest_positions(settings, topics)

    async def store(positions: Positions) -> None:
        return None  # a restarted process starts a fresh arena from the end

    return ConsumerLoop(
        settings,
        topics=topics,
        group_id=GROUP_ID,
        # Never used: the handler dead-letters nothing (see the module docstring).
        publisher=publisher,
        handle_batch=ArenaRecords(host).handle_batch,
        policy=StoredOffsets(load, store),
        client_suffix="arena",
    )
