"""The `events.raw` loop with a fake consumer: offsets are committed in order and
only after a batch's events were published; a failed batch commits nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection, Sequence
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from driftloop_core.featureset import default_featureset_path, load_featureset
from driftloop_core.kafka.loop import ConsumerLoop
from driftloop_core.kafka.publisher import Publisher
from driftloop_core.settings import load_settings
from driftloop_ingestion.bootstrap import build_consumer
from driftloop_ingestion.config import IngestionSettings
from driftloop_ingestion.handlers import Ingestor
from driftloop_ingestion.ports import IndexEntry, Publication, PublishFailed
from driftloop_ingestion.validation import Validator

TP = TopicPartition("events.raw", 0)
NOW_MS = 1_763_800_000_000


class FakeConsumer:
    def __init__(self, batches: list[list[Any]]) -> None:
        self.batches = batches
        self.commits: list[dict[TopicPartition, int]] = []

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def subscribe(self, topics: list[str], listener: Any) -> None:
        pass

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        if self.batches:
            return {TP: self.batches.pop(0)}
        await asyncio.sleep(timeout_ms / 1000)
        return {}

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    def highwater(self, tp: TopicPartition) -> int | None:
        return None


class Index:
    def __init__(self) -> None:
        self.recorded: list[str] = []

    def lookup(self, event_ids: Collection[str]) -> dict[str, IndexEntry]:
        return {}

    def record(
        self, observations: Sequence[IndexEntry], labelled: Sequence[str], **held: Any
    ) -> None:
        self.recorded.extend(entry.event_id for entry in observations)

    def held_count(self) -> int:
        return 0


class Sink:
    """Fails the publish of the batches whose first event id is in `failing`."""

    def __init__(self, failing: set[str]) -> None:
        self.failing = failing
        self.published: list[str] = []

    async def publish(self, events: Sequence[Publication]) -> None:
        await asyncio.sleep(0.01)
        if events[0].event_id in self.failing:
            raise PublishFailed("broker said no")
        self.published.extend(event.event_id for event in events)


def record(offset: int) -> Any:
    body = {
        "event_id": f"e{offset}",
        "customer_id": "c1",
        "ts": NOW_MS,
        "amount": 1.0,
        "channel": "web",
        "hour": 1,
    }
    return SimpleNamespace(
        topic=TP.topic,
        partition=TP.partition,
        offset=offset,
        timestamp=NOW_MS,
        key=None,
        value=json.dumps(body).encode(),
        headers=(),
    )


def loop_with(
    batches: list[list[Any]], failing: set[str]
) -> tuple[ConsumerLoop, FakeConsumer, Index, Sink]:
    settings = load_settings()
    index, sink = Index(), Sink(failing)
    ingestor = Ingestor(
        Validator(load_featureset(default_featureset_path()), clock=lambda: NOW_MS / 1000),
        index,
        sink,
        dedup_window=timedelta(hours=1),
        label_horizon=timedelta(hours=1),
        clock=lambda: NOW_MS / 1000,
    )
    fake = FakeConsumer(batches)
    consumer = build_consumer(
        settings, IngestionSettings(), ingestor, Publisher(settings), consumer=fake
    )
    return consumer, fake, index, sink


async def test_batches_are_committed_in_order_after_publishing() -> None:
    consumer, fake, index, sink = loop_with([[record(0), record(1)], [record(2)]], set())
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    async with asyncio.timeout(5):
        await consumer.wait_handled(3)
    consumer.request_stop()
    await task
    assert fake.commits == [{TP: 2}, {TP: 3}]
    assert sink.published == index.recorded == ["e0", "e1", "e2"]


@pytest.mark.parametrize("failing", ["e0", "e2"])
async def test_a_failed_batch_commits_nothing_from_it_onwards(failing: str) -> None:
    consumer, fake, index, _ = loop_with([[record(0), record(1)], [record(2)]], {failing})
    await consumer.start()
    with pytest.raises(PublishFailed):
        async with asyncio.timeout(5):
            await consumer.run()
    if failing == "e0":
        # The batch after it may have been published (it ran alongside), but no
        # offset moved past the failed one: both are read again after a restart.
        assert fake.commits == [] and "e0" not in index.recorded
    else:
        assert fake.commits == [{TP: 2}] and index.recorded == ["e0", "e1"]
