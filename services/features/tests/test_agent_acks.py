"""The Faust agent acks an event only once it is applied, on the real broker.

Faust's own acks are in a `finally`: before the agent took them over, an event
whose handling raised an OSError was acked anyway, its offset committed, and
the restarted actor carried on with the next event: the event was never
applied. Now a transient error is retried until it clears (the offset stays
uncommitted meanwhile) and any other error leaves the event unacked for the
next worker to read again.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from driftloop.v1 import common_pb2, events_pb2
from driftloop_core.feature_math import FeatureMath
from driftloop_core.featureset import default_featureset_path, load_featureset
from driftloop_core.kafka import Outgoing, PoisonMessage, Publisher, Record, TopicSpec
from driftloop_core.kafka.topics import ensure_topics
from driftloop_core.settings import Settings
from driftloop_features.adapters.faust_app import FeaturesApp, build_faust_app, faust_topic_specs
from driftloop_features.entrypoints.events import EventsAgent, StreamAgent
from driftloop_features.stream import OBSERVED, StreamHandler

pytestmark = pytest.mark.integration

FS = load_featureset(default_featureset_path())
T0 = 1_763_800_000_000
# Longer than Faust's commit interval (2.8 s): a commit would have happened.
COMMIT_WAIT_S = 4.0


@dataclass
class Worker:
    """A Faust worker of the feature store's agent, with its offline sends."""

    features: FeaturesApp
    stream: StreamAgent
    handler: StreamHandler
    sent: list[Outgoing] = field(default_factory=list)


@dataclass
class Setup:
    settings: Settings
    app_id: str
    topic: str
    offline_topic: str
    workers: list[Worker] = field(default_factory=list)

    def worker(self, fail: Callable[[], BaseException | None]) -> Worker:
        """A worker whose offline sends raise `fail()` while it returns an error."""
        features = build_faust_app(self.settings, app_id=self.app_id)
        handler = StreamHandler(FeatureMath(FS), features.table, offline_topic=self.offline_topic)

        async def send(outgoing: Outgoing) -> None:
            error = fail()
            if error is not None:
                raise error
            worker.sent.append(outgoing)
            await features.send(outgoing)

        async def deadletter(poisoned: Sequence[tuple[Record, PoisonMessage]]) -> None:
            raise AssertionError(f"dead-lettered: {[poison.reason for _, poison in poisoned]}")

        agent = EventsAgent(handler, send, deadletter, group=self.app_id)
        stream = StreamAgent(agent, self.settings.kafka)
        stream.attach(features, topic=self.topic)
        worker = Worker(features, stream, handler)
        self.workers.append(worker)
        return worker

    async def committed(self, partition: int) -> int | None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka.bootstrap_servers, group_id=self.app_id
        )
        await consumer.start()
        try:
            result: int | None = await consumer.committed(TopicPartition(self.topic, partition))
            return result
        finally:
            await consumer.stop()


@pytest.fixture
async def setup(settings: Settings, unique: str) -> AsyncIterator[Setup]:
    kafka = settings.kafka.model_copy(
        update={"retry_backoff_initial_s": 0.05, "retry_backoff_max_s": 0.3}
    )
    settings = settings.model_copy(update={"kafka": kafka})
    app_id = f"features-{unique}"
    ready = Setup(settings, app_id, f"events.valid.{unique}", f"features.offline.{unique}")
    await ensure_topics(
        kafka,
        [
            TopicSpec(ready.topic, kafka.partitions),
            TopicSpec(ready.offline_topic, kafka.partitions),
            *faust_topic_specs(settings, app_id),
        ],
    )
    yield ready
    for worker in ready.workers:
        worker.stream.request_stop()
        await worker.features.stop()


async def publish(setup: Setup, event_id: str, t_ms: int) -> tuple[int, int]:
    """Publish an observation of entity c1; returns its partition and offset."""
    message = events_pb2.Observation(event_id=event_id, entity_id="c1", feature_set=FS.name)
    message.event_time.FromMilliseconds(t_ms)
    message.values["amount"].CopyFrom(common_pb2.FeatureValue(float_value=10.0))
    outgoing = Outgoing(setup.topic, message.SerializeToString(), "c1", OBSERVED, event_id)
    async with Publisher(setup.settings) as publisher:
        [sent] = await publisher.publish_batch([outgoing])
    return sent.partition, sent.offset


def counted(worker: Worker) -> list[str]:
    return [event.event_id for event in worker.handler.state("c1").events]


async def until(check: Callable[[], bool], timeout_s: float = 60) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():  # noqa: ASYNC110 - polling state another task changes
            await asyncio.sleep(0.1)


async def test_a_transient_error_is_retried_and_the_event_acked_once_applied(
    setup: Setup,
) -> None:
    partition, offset = await publish(setup, "e1", T0)
    attempts = 0
    failing = True

    def disk_error() -> BaseException | None:
        nonlocal attempts
        attempts += 1
        return OSError(errno.EIO, "Input/output error") if failing else None

    worker = setup.worker(disk_error)
    await worker.features.start()
    await until(lambda: attempts >= 3)
    await asyncio.sleep(COMMIT_WAIT_S)

    # Still failing: retried, not applied, not committed.
    assert attempts > 3
    assert counted(worker) == []
    assert (await setup.committed(partition) or 0) <= offset

    failing = False
    await until(lambda: counted(worker) == ["e1"])
    await asyncio.sleep(COMMIT_WAIT_S)

    assert counted(worker) == ["e1"]  # applied exactly once
    assert [outgoing.event_id for outgoing in worker.sent] == ["e1"]  # one row published
    assert await setup.committed(partition) == offset + 1
    assert not worker.stream.failed or not worker.stream.failed.done()


async def test_an_unrecoverable_error_leaves_the_event_for_the_restarted_worker(
    setup: Setup,
) -> None:
    partition, first_offset = await publish(setup, "e1", T0)
    await publish(setup, "e2", T0 + 1000)

    worker = setup.worker(lambda: PermissionError(errno.EACCES, "Permission denied"))
    await worker.features.start()
    error = await asyncio.wait_for(worker.stream.wait_failed(), 60)
    await asyncio.sleep(COMMIT_WAIT_S)

    # The agent stopped: neither event applied, nothing committed past the first.
    assert isinstance(error, PermissionError)
    assert counted(worker) == []
    assert (await setup.committed(partition) or 0) <= first_offset
    # The service then exits; a new worker reads both events again.
    await worker.features.stop()

    restarted = setup.worker(lambda: None)
    await restarted.features.start()
    await until(lambda: counted(restarted) == ["e1", "e2"])
    await asyncio.sleep(COMMIT_WAIT_S)

    assert [outgoing.event_id for outgoing in restarted.sent] == ["e1", "e2"]
    assert await setup.committed(partition) == first_offset + 2
